"""The numbers of the campaign report, as pure functions of what the store holds.

Statistics over repetitions (:func:`summarize`), the error bar a point can carry
(:func:`interval`), runs grouped into points (:func:`group_runs`), series against
the remote latency (:func:`by_latency`, :func:`slowdowns`), cache levels
(:func:`level_means`) and time series (:func:`pick_counters`, :func:`as_rate`).
``report.py`` turns them into text and plots; see its docstring for what the
bars mean and why.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from itertools import pairwise
from typing import Any

from .results import LevelRow

MAX_SUBPLOTS = 6
# Counters worth seeing first in the time series, by name (substring), most wanted first.
PREFERRED_COUNTERS = ("injected_ns", "memory", "numa_hit", "numa_miss", "pgmigrate_success", "accesses",
                      "numa_foreign", "pgpromote_success", "numa_pages_migrated")

# Two-sided 95% quantiles of Student's t, df 1..30; beyond that the normal 1.96.
T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
       2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
       2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
# Fewer repetitions give no confidence interval worth showing: with 2, the 95% t-interval
# is 12.7 standard errors wide each way (a slowdown of 1.1 +- 4 told readers nothing).
MIN_CI_N = 3

Params = tuple[tuple[str, Any], ...]  # sorted (name, value) pairs; values hashable


# -- statistics ------------------------------------------------------------------------------------


def t95(df: int) -> float:
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, not {df}")
    return T95[df - 1] if df <= len(T95) else 1.96


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    stdev: float | None  # sample standard deviation; None for one value
    ci95: float | None  # half-width of the 95% t-interval of the mean; None under MIN_CI_N values
    low: float  # the smallest repetition
    high: float  # the largest
    values: tuple[float, ...]  # every repetition, in run order


def summarize(values: Sequence[float]) -> Summary:
    n = len(values)
    mean = statistics.fmean(values)
    stdev = statistics.stdev(values) if n > 1 else None
    ci95 = t95(n - 1) * stdev / math.sqrt(n) if stdev is not None and n >= MIN_CI_N else None
    return Summary(n, mean, stdev, ci95, min(values), max(values), tuple(values))


class BarKind(StrEnum):
    NONE = "none"  # one repetition: the point alone
    MINMAX = "min-max"  # fewer than MIN_CI_N repetitions
    MINMAX_FLOOR = "min-max-floor"  # enough repetitions, but the t-interval would reach 0 or below
    T95 = "t95"  # the 95% t-interval of the mean

    def describe(self, n: int) -> str:
        if self is BarKind.NONE:
            return "none (1 repetition: the point alone)"
        if self is BarKind.MINMAX:
            return f"min-max of {n} repetitions"
        if self is BarKind.MINMAX_FLOOR:
            return f"min-max of {n} repetitions (their 95 % t-interval would reach 0 or below)"
        return f"95 % t-interval of {n} repetitions"


@dataclass(frozen=True)
class Bar:
    """The error bar of one point: from ``low`` to ``high``, and what it is."""

    kind: BarKind
    n: int
    low: float
    high: float


def interval(s: Summary, positive: bool = True) -> Bar:
    """The bar a point's repetitions can carry.

    One repetition: none. Fewer than MIN_CI_N: min-max. Otherwise the 95%
    t-interval of the mean, unless ``positive`` (the quantity cannot be 0 or
    below: a time, a throughput, a slowdown) and the interval would reach 0: then
    min-max, which stays within what was measured. Clipping the interval at 0
    instead would draw something that is no longer a 95% interval.
    """
    if s.n == 1:
        return Bar(BarKind.NONE, 1, s.mean, s.mean)
    if s.ci95 is None:
        return Bar(BarKind.MINMAX, s.n, s.low, s.high)
    if positive and s.mean - s.ci95 <= 0:
        return Bar(BarKind.MINMAX_FLOOR, s.n, s.low, s.high)
    return Bar(BarKind.T95, s.n, s.mean - s.ci95, s.mean + s.ci95)


_BAR_ORDER = (BarKind.T95, BarKind.MINMAX_FLOOR, BarKind.MINMAX, BarKind.NONE)


def describe_bars(bars: Iterable[Bar]) -> str:
    """``bars: min-max of 2 repetitions``; with several kinds, each with its number of points."""
    counts = Counter((b.kind, b.n) for b in bars)
    if not counts:
        return "bars: none"
    keys = sorted(counts, key=lambda k: (_BAR_ORDER.index(k[0]), -k[1]))
    if len(keys) == 1:
        return "bars: " + keys[0][0].describe(keys[0][1])
    return "bars: " + "; ".join(f"{kind.describe(n)} at {counts[(kind, n)]} point{'s' * (counts[(kind, n)] > 1)}"
                                for kind, n in keys)


# -- grouping --------------------------------------------------------------------------------------


def _hashable(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return json.dumps(value, sort_keys=True)


def _params(params: dict[str, Any]) -> Params:
    return tuple(sorted((k, _hashable(v)) for k, v in params.items()))


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class Group:
    """Runs of one workload with the same parameters, i.e. the repetitions of one point."""

    workload: str
    params: Params
    values: dict[str, Summary]  # metric -> summary over the repetitions

    def param(self, name: str) -> Any:
        return dict(self.params).get(name)


def group_runs(runs: Iterable[dict[str, Any]], values: dict[str, dict[str, float]]) -> list[Group]:
    """Group the ok runs by workload and parameters; summarise each value over the repetitions.

    ``values`` is run_id -> name -> value (e.g. :meth:`Store.metrics`). Groups come in
    the order of their first run.
    """
    collected: dict[tuple[str, Params], dict[str, list[float]]] = {}
    for run in runs:
        if run["status"] != "ok":
            continue
        per_name = collected.setdefault((run["workload"], _params(run["params"])), {})
        for name, value in values.get(run["run_id"], {}).items():
            per_name.setdefault(name, []).append(value)
    return [Group(workload, params, {name: summarize(v) for name, v in sorted(per_name.items())})
            for (workload, params), per_name in collected.items()]


def varying(groups: Iterable[Group]) -> list[str]:
    """The parameters whose value differs between groups (missing counts as a value)."""
    seen: dict[str, set[Any]] = {}
    groups = list(groups)
    for g in groups:
        for name, _ in g.params:
            seen.setdefault(name, set())
    for g in groups:
        for name in seen:
            seen[name].add(g.param(name))
    return sorted(name for name, values in seen.items() if len(values) > 1)


def latency_parameter(runs: Iterable[dict[str, Any]]) -> str | None:
    names = sorted({k for r in runs for k in r["params"] if k.endswith("latency_ns")})
    return names[0] if names else None


def primary_metrics(meta: dict[str, str], groups: Iterable[Group]) -> dict[str, str]:
    """workload -> its primary metric: ``meta['primary.<workload>']`` if measured, else the first by name."""
    names: dict[str, set[str]] = {}
    for g in groups:
        names.setdefault(g.workload, set()).update(g.values)
    out = {}
    for workload, measured in names.items():
        wanted = meta.get(f"primary.{workload}")
        if wanted in measured:
            out[workload] = wanted
        elif measured:
            out[workload] = sorted(measured)[0]
    return out


# -- series against latency ------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    x: float
    y: float  # the mean
    values: tuple[float, ...]  # every repetition
    bar: Bar


@dataclass(frozen=True)
class Series:
    """One line of a plot: a workload at fixed parameters (all but the latency)."""

    workload: str
    key: Params
    points: list[Point]


def _without(params: Params, name: str | None) -> Params:
    return tuple(p for p in params if p[0] != name)


def by_latency(groups: Iterable[Group], latency: str, metric: str) -> list[Series]:
    """Mean, repetitions and bar of ``metric`` against the latency parameter, one series per workload and
    other parameters. The metric is taken to be positive (a time or a rate): see :func:`interval`."""
    found: dict[tuple[str, Params], list[Point]] = {}
    for g in groups:
        x = _number(g.param(latency))
        s = g.values.get(metric)
        if x is None or s is None:
            continue
        found.setdefault((g.workload, _without(g.params, latency)), []).append(
            Point(x, s.mean, s.values, interval(s)))
    return [Series(w, key, sorted(points, key=lambda p: p.x)) for (w, key), points in found.items()]


def _slowdown(p: Point, baseline: float, better: str) -> Point:
    """The point as a slowdown against ``baseline`` (taken as exact). The map is monotonic, so a
    t-interval's ends map to the ends of a 95% interval of the slowdown (asymmetric for a rate)."""
    def ratio(v: float) -> float:
        return v / baseline if better == "lower" else baseline / v

    values = tuple(ratio(v) for v in p.values if better == "lower" or v > 0)
    y = ratio(p.y)
    if p.bar.kind is BarKind.NONE:
        bar = Bar(BarKind.NONE, 1, y, y)
    elif p.bar.kind is BarKind.T95:  # its low end is > 0 (see interval)
        low, high = sorted((ratio(p.bar.low), ratio(p.bar.high)))
        bar = Bar(BarKind.T95, p.bar.n, low, high)
    else:
        bar = Bar(p.bar.kind, p.bar.n, min(values, default=y), max(values, default=y))
    return Point(p.x, y, values, bar)


def slowdowns(groups: Iterable[Group], latency: str, metric: str, better: str) -> list[Series]:
    """Slowdown against the lowest latency of the same series: 1 there, > 1 when slower.

    ``better`` is the metric's direction: ``higher`` (throughput: baseline / value)
    or ``lower`` (time: value / baseline). Zero means are left out (no ratio).
    """
    out = []
    for s in by_latency(groups, latency, metric):
        baseline = s.points[0].y
        if baseline == 0:
            continue
        out.append(Series(s.workload, s.key, [_slowdown(p, baseline, better) for p in s.points if p.y != 0]))
    return out


# -- cache levels ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LevelMean:
    workload: str
    key: Params  # parameters but the latency
    level: str
    hits: float
    misses: float
    miss_ratio: float


def level_means(runs: Iterable[dict[str, Any]], by_run: dict[str, list[LevelRow]],
                latency: str | None) -> list[LevelMean]:
    """Hits, misses and miss ratio per level, averaged over the ok runs of a workload at fixed parameters
    (latencies and repetitions pooled)."""
    found: dict[tuple[str, Params], dict[str, list[LevelRow]]] = {}
    for run in runs:
        if run["status"] != "ok" or run["run_id"] not in by_run:
            continue
        per_level = found.setdefault((run["workload"], _without(_params(run["params"]), latency)), {})
        for lv in by_run[run["run_id"]]:
            per_level.setdefault(lv.level, []).append(lv)
    return [LevelMean(w, key, name, statistics.fmean(x.hits for x in rows), statistics.fmean(x.misses for x in rows),
                      statistics.fmean(x.miss_ratio for x in rows))
            for (w, key), per_level in found.items() for name, rows in per_level.items()]


# -- time series -----------------------------------------------------------------------------------


def pick_counters(keys: Iterable[tuple[str, str]], limit: int = MAX_SUBPLOTS) -> list[tuple[str, str]]:
    """The (source, name) pairs to plot: preferred names first, plugin before guest, then by name."""
    def rank(key: tuple[str, str]) -> tuple[int, bool, str, str]:
        source, name = key
        wanted = [i for i, p in enumerate(PREFERRED_COUNTERS) if p in name]
        return (min(wanted) if wanted else len(PREFERRED_COUNTERS), source != "plugin", source, name)

    return sorted(keys, key=rank)[:limit]


def as_rate(points: Sequence[tuple[float, float]]) -> tuple[list[tuple[float, float]], bool]:
    """A counter that only grows becomes its rate per second; anything else stays as it is.

    Returns the points and whether they are a rate.
    """
    values = [v for _, v in points]
    growing = len(points) > 1 and values[-1] > values[0] and all(b >= a for a, b in pairwise(values))
    if not growing:
        return list(points), False
    return [(t1, (v1 - v0) / (t1 - t0)) for (t0, v0), (t1, v1) in pairwise(points) if t1 > t0], True
