"""The campaign report: ``<directory>/report/`` with report.md, report.html and PNG plots.

Everything comes from the store (``results.sqlite``), nothing from the testbed,
so a report can be redrawn anywhere, long after the blades are gone. It holds:

* the campaign (meta table), runs by status, and every failed or timed-out run
  with its error;
* per workload, each metric summarised over repetitions: runs of status ok are
  grouped by workload and every parameter; n, mean, sample stdev, min, max and
  the half-width of the 95% confidence interval (Student's t) from 3
  repetitions on (with 2, t = 12.7 and the interval says nothing);
* plots, each skipped with a reason when its data is absent:
  ``slowdown.png`` (primary metric against remote latency, relative to the
  lowest latency), ``hierarchy.png`` (miss ratio per cache level),
  ``amat.png`` (average memory access time against latency) and
  ``timeseries.png`` (counters sampled during one run).

Plots show every repetition as a dot and the means as a line (or a bar). The
error bars show what the data can carry (:func:`interval`): nothing for one
repetition, min-max for two, the 95% t-interval from three on, and min-max
again where that interval would reach 0 or below, since a slowdown, a time or a
throughput cannot (an interval is not drawn clipped: it would no longer be one).
Each plot's caption and each summary table say which bars it has.

The remote latency is the first parameter (sorted) whose name ends with
``latency_ns``; a workload's primary metric is ``meta['primary.<workload>']``
or else its first metric alphabetically. The numbers come from pure functions
(:func:`summarize`, :func:`interval`, :func:`group_runs`, :func:`by_latency`,
:func:`slowdowns`, :func:`as_rate`), the text from a list of blocks rendered
once as Markdown and once as HTML, so both files say the same.
"""

from __future__ import annotations

import html
import json
import math
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import pairwise
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display; must come before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402

from .errors import StateError  # noqa: E402
from .results import LevelRow, levels, plugin_totals, sampled_runs, samples  # noqa: E402
from .store import Store  # noqa: E402

REPORT_DIR = "report"
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


# -- what the report is made of --------------------------------------------------------------------


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Bullets:
    items: list[str]


@dataclass(frozen=True)
class Code:
    text: str


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass(frozen=True)
class Image:
    file: str
    alt: str


Block = Heading | Text | Bullets | Code | Table | Image


@dataclass
class Campaign:
    """Everything the report reads from the store, read once."""

    meta: dict[str, str]
    runs: list[dict[str, Any]]
    info: dict[str, tuple[str, str]]  # metric -> (unit, better)
    groups: list[Group]
    levels: dict[str, list[LevelRow]]
    latency: str | None
    primary: dict[str, str]
    sample_run: str | None = None
    samples: dict[tuple[str, str], list[tuple[float, float]]] = field(default_factory=dict)

    def workload_groups(self, workload: str) -> list[Group]:
        return [g for g in self.groups if g.workload == workload]

    def workloads(self) -> list[str]:
        return list(dict.fromkeys(g.workload for g in self.groups))

    def label(self, workload: str, key: Params) -> str:
        shown = set(varying(self.workload_groups(workload)))
        return ", ".join(f"{k}={v}" for k, v in key if k in shown) or "all runs"


def _sample_run(store: Store, runs: list[dict[str, Any]], run_id: str | None) -> str | None:
    if run_id is not None:
        if run_id not in {r["run_id"] for r in runs}:
            raise StateError(f"run {run_id!r} is not in {store.path}", hint="give a run_id from the tidy table")
        return run_id
    sampled = sampled_runs(store)
    candidates = [r["run_id"] for r in runs if r["status"] == "ok" and r["run_id"] in sampled]
    # The run the plugin delayed most shows the most; without the plugin, the first.
    injected = {k: v.get("injected_ns", 0) for k, v in plugin_totals(store).items()}
    return max(candidates, key=lambda r: injected.get(r, 0), default=None)


def load(store: Store, run_id: str | None = None) -> Campaign:
    """Read the campaign; ``run_id`` picks the run for the time series (default: the ok run with samples
    that the plugin delayed most, or the first one)."""
    runs = store.runs()
    groups = group_runs(runs, store.metrics())
    meta = store.meta()
    c = Campaign(meta=meta, runs=runs, info=store.metric_info(), groups=groups, levels=levels(store),
                 latency=latency_parameter(runs), primary=primary_metrics(meta, groups))
    c.sample_run = _sample_run(store, runs, run_id)
    if c.sample_run is not None:
        c.samples = samples(store, c.sample_run)
    return c


def _num(x: float) -> str:
    return f"{x:.6g}"


def _value(v: Any) -> str:
    return "" if v is None else str(v)


def header(c: Campaign, directory: Path) -> list[Block]:
    blocks: list[Block] = [Heading(f"Campaign {c.meta.get('name', directory.name)}", 1)]
    if "created" in c.meta:
        blocks.append(Text(f"Created {c.meta['created']}."))
    rest = {k: v for k, v in sorted(c.meta.items()) if k not in ("name", "created")}
    lines = [f"{k}: {v}" for k, v in rest.items() if "\n" not in v]
    if lines:
        blocks.append(Bullets(lines))
    for key, text in rest.items():  # file texts (campaign, testbed) verbatim
        if "\n" in text:
            blocks += [Heading(key, 3), Code(text)]
    return blocks


def runs_section(c: Campaign) -> list[Block]:
    counts = {s: sum(r["status"] == s for r in c.runs) for s in ("ok", "failed", "timeout")}
    blocks: list[Block] = [Heading("Runs"),
                           Text(f"{len(c.runs)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + ".")]
    bad = [r for r in c.runs if r["status"] != "ok"]
    if bad:
        blocks.append(Table(["run", "status", "workload", "rep", "parameters", "exit code", "error"],
                            [[r["run_id"], r["status"], r["workload"], str(r["rep"]),
                              ", ".join(f"{k}={v}" for k, v in sorted(r["params"].items())),
                              _value(r["exit_code"]), _value(r["error"])] for r in bad]))
    return blocks


def _dash(x: float | None) -> str:
    return "–" if x is None else _num(x)


def summary_section(c: Campaign) -> list[Block]:
    blocks: list[Block] = [Heading("Summary"),
                           Text("Runs with status ok, grouped by workload and parameters, over repetitions: "
                                "n, mean, sample standard deviation, min, max and the half-width of the 95 % "
                                f"confidence interval of the mean (Student's t). ci95 is '–' under {MIN_CI_N} "
                                "repetitions: with 2, t = 12.7 and the interval says nothing; min and max say "
                                "what was measured. stdev is '–' for a single run.")]
    if not c.groups:
        return [*blocks, Text("No run ended ok.")]
    for workload in c.workloads():
        groups = c.workload_groups(workload)
        shown = varying(groups)
        fixed = [f"{k}={v}" for k, v in groups[0].params if k not in shown]
        blocks.append(Heading(workload, 3))
        if fixed:
            blocks.append(Text("Fixed: " + ", ".join(fixed) + "."))
        rows = [[_value(g.param(p)) for p in shown]
                + [m, *c.info.get(m, ("", "")), str(s.n), _num(s.mean), _dash(s.stdev), _num(s.low),
                   _num(s.high), _dash(s.ci95)]
                for g in groups for m, s in g.values.items()]
        blocks.append(Table([*shown, "metric", "unit", "better", "n", "mean", "stdev", "min", "max", "ci95"], rows))
        caption = _table_caption(c, workload)
        if caption:
            blocks.append(Text(caption))
    return blocks


def _table_caption(c: Campaign, workload: str) -> str:
    """What the bars are in the plot of this workload's primary metric."""
    metric = c.primary.get(workload)
    if metric is None:
        return ""
    if c.latency is None:
        bars = [b for _, b in _bar_plot_points(c, workload)]
        where = "the primary-metric plot"
    else:
        bars = [p.bar for s in _slowdown_series(c).get(workload, []) for p in s.points]
        where = "the slowdown plot"
    if not bars:
        return ""
    return f"In {where} ({metric}): {describe_bars(bars)}."


def hierarchy_table(c: Campaign) -> list[Block]:
    means = level_means(c.runs, c.levels, c.latency)
    if not means:
        return []
    return [Table(["workload", "runs", "level", "hits", "misses", "miss ratio"],
                  [[m.workload, c.label(m.workload, m.key), m.level, _num(m.hits), _num(m.misses),
                    f"{m.miss_ratio:.4f}"] for m in means])]


# -- plots -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    drawn: bool
    text: str  # the caption, or why the plot was skipped


def _figure(n: int, width: float = 5.5, height: float = 4.0, ncols: int = 3) -> tuple[Any, list[Any]]:
    ncols = min(n, ncols)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _error_bars(ax: Any, xs: Sequence[float], ys: Sequence[float], bars: Sequence[Bar], color: Any) -> None:
    """Draw the bars, t-intervals solid and min-max dotted; a point with one repetition gets none."""
    for dotted in (False, True):
        chosen = [(x, y, b) for x, y, b in zip(xs, ys, bars, strict=True)
                  if b.kind is not BarKind.NONE and (b.kind is not BarKind.T95) == dotted]
        if not chosen:
            continue
        drawn = ax.errorbar([x for x, _, _ in chosen], [y for _, y, _ in chosen],
                            yerr=[[y - b.low for _, y, b in chosen], [b.high - y for _, y, b in chosen]],
                            fmt="none", ecolor=color, capsize=3, elinewidth=1)
        if dotted:
            for lines in drawn.lines[2]:
                lines.set_linestyle(":")


def _plot_lines(c: Campaign, per_workload: dict[str, list[Series]], ylabel: str, path: Path) -> None:
    fig, axes = _figure(len(per_workload))
    for ax, (workload, series) in zip(axes, per_workload.items(), strict=True):
        for s in series:
            xs, ys = [p.x for p in s.points], [p.y for p in s.points]
            (line,) = ax.plot(xs, ys, marker="_", markersize=10, label=c.label(workload, s.key))
            color = line.get_color()
            ax.plot([p.x for p in s.points for _ in p.values], [v for p in s.points for v in p.values],
                    linestyle="none", marker="o", markersize=3, alpha=0.6, color=color)
            _error_bars(ax, xs, ys, [p.bar for p in s.points], color)
        ax.set_title(workload)
        ax.set_xlabel(c.latency or "")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    _save(fig, path)


def _bar_plot_points(c: Campaign, workload: str) -> list[tuple[Group, Bar]]:
    """The groups of the primary-metric plot (no latency parameter) with their bars. A metric is
    taken to be positive (see :func:`interval`) if every value of it in this workload is."""
    metric = c.primary[workload]
    groups = [g for g in c.workload_groups(workload) if metric in g.values]
    positive = all(v > 0 for g in groups for v in g.values[metric].values)
    return [(g, interval(g.values[metric], positive)) for g in groups]


def _plot_bars(c: Campaign, path: Path) -> None:
    workloads = [w for w in c.workloads() if w in c.primary]
    fig, axes = _figure(len(workloads))
    for ax, workload in zip(axes, workloads, strict=True):
        metric = c.primary[workload]
        points = _bar_plot_points(c, workload)
        labels = [c.label(workload, g.params) for g, _ in points]
        xs = list(range(len(points)))
        means = [g.values[metric].mean for g, _ in points]
        ax.bar(xs, means, color="#c6dbef")
        ax.plot([x for x, (g, _) in zip(xs, points, strict=True) for _ in g.values[metric].values],
                [v for g, _ in points for v in g.values[metric].values],
                linestyle="none", marker="o", markersize=3, alpha=0.7, color="black")
        _error_bars(ax, xs, means, [b for _, b in points], "black")
        ax.set_xticks(range(len(points)), labels, rotation=30, ha="right", fontsize="small")
        ax.set_title(f"{workload}: {metric} per placement")
        ax.set_ylabel(f"{metric} {c.info.get(metric, ('', ''))[0]}".strip())
    _save(fig, path)


def _slowdown_series(c: Campaign) -> dict[str, list[Series]]:
    """workload -> the series of its slowdown plot (none without a latency parameter)."""
    per_workload: dict[str, list[Series]] = {}
    if c.latency is None:
        return per_workload
    for workload, metric in c.primary.items():
        better = c.info.get(metric, ("", "higher"))[1]
        series = slowdowns(c.workload_groups(workload), c.latency, metric, better)
        if series:
            per_workload[workload] = series
    return per_workload


DOTS = "dots: each repetition"


def plot_slowdown(c: Campaign, path: Path) -> Outcome:
    if not c.primary:
        return Outcome(False, "no run ended ok with a metric")
    if c.latency is None:
        _plot_bars(c, path)
        bars = [b for w in c.workloads() if w in c.primary for _, b in _bar_plot_points(c, w)]
        return Outcome(True, "No latency parameter: each workload's primary metric per placement; "
                             f"{DOTS}, columns: the means; {describe_bars(bars)}.")
    per_workload = _slowdown_series(c)
    if not per_workload:
        return Outcome(False, f"no ok run has both a {c.latency} and its workload's primary metric")
    _plot_lines(c, per_workload, "slowdown (1 = lowest latency)", path)
    metrics = ", ".join(f"{w}: {c.primary[w]}" for w in per_workload)
    bars = [p.bar for series in per_workload.values() for s in series for p in s.points]
    return Outcome(True, f"Slowdown of the primary metric ({metrics}) against {c.latency}, relative to the "
                         "mean at the lowest latency of the same placement and parameters; "
                         f"{DOTS}, line: the means; {describe_bars(bars)}.")


def plot_hierarchy(c: Campaign, path: Path) -> Outcome:
    means = level_means(c.runs, c.levels, c.latency)
    if not means:
        return Outcome(False, "no ok run has cache-level statistics (the latency plugin was not loaded, e.g. KVM)")
    per_workload: dict[str, list[LevelMean]] = {}
    for m in means:
        per_workload.setdefault(m.workload, []).append(m)
    fig, axes = _figure(len(per_workload))
    for ax, (workload, rows) in zip(axes, per_workload.items(), strict=True):
        level_names = list(dict.fromkeys(m.level for m in rows))
        keys = list(dict.fromkeys(m.key for m in rows))
        width = 0.8 / len(keys)
        for i, key in enumerate(keys):
            ratio = {m.level: m.miss_ratio for m in rows if m.key == key}
            ax.bar([j + i * width for j in range(len(level_names))], [ratio.get(n, 0.0) for n in level_names],
                   width, label=c.label(workload, key))
        ax.set_xticks([j + (len(keys) - 1) * width / 2 for j in range(len(level_names))], level_names)
        ax.set_title(workload)
        ax.set_ylabel("miss ratio")
        ax.legend(fontsize="small")
    _save(fig, path)
    return Outcome(True, "Miss ratio per cache level, mean over the ok runs (all latencies and repetitions).")


def plot_amat(c: Campaign, path: Path) -> Outcome:
    amat = {run_id: {"amat_ns": rows[0].amat_ns} for run_id, rows in c.levels.items() if rows}
    if not amat:
        return Outcome(False, "no ok run has cache-level statistics (the latency plugin was not loaded, e.g. KVM)")
    if c.latency is None:
        return Outcome(False, "no latency parameter to plot the AMAT against")
    per_workload: dict[str, list[Series]] = {}
    for s in by_latency(group_runs(c.runs, amat), c.latency, "amat_ns"):
        per_workload.setdefault(s.workload, []).append(s)
    if not per_workload:
        return Outcome(False, f"no ok run has both cache-level statistics and a {c.latency}")
    _plot_lines(c, per_workload, "AMAT at the first level (ns)", path)
    bars = [p.bar for series in per_workload.values() for s in series for p in s.points]
    return Outcome(True, f"Average memory access time seen at the first cache level against {c.latency}; "
                         f"{DOTS}, line: the means; {describe_bars(bars)}.")


def plot_timeseries(c: Campaign, path: Path) -> Outcome:
    if c.sample_run is None:
        return Outcome(False, "no ok run has samples")
    if not c.samples:
        return Outcome(False, f"run {c.sample_run} has no samples")
    chosen = pick_counters(c.samples)
    fig, axes = _figure(len(chosen), width=9.0, height=2.2, ncols=1)
    for ax, (source, name) in zip(axes, chosen, strict=True):
        points, rate = as_rate(c.samples[(source, name)])
        ax.plot([t for t, _ in points], [v for _, v in points], marker=".")
        ax.set_ylabel(f"{name} /s" if rate else name, fontsize="small")
        ax.set_title(f"{source}: {name}", fontsize="small")
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("seconds since the run started")
    _save(fig, path)
    return Outcome(True, f"Counters sampled during run {c.sample_run}; counters that only grow are shown "
                         "as a rate per second.")


BARS = ("Each repetition is a dot; lines (or columns) join the means. Error bars, solid: the 95 % t-interval of "
        f"the mean, where a point has at least {MIN_CI_N} repetitions; dotted: min to max, where it has fewer "
        "(a single run has none). A slowdown, a time or a throughput cannot be 0 or below, so an interval that "
        "would reach there is not drawn, clipped or not: that point gets its min-max (dotted) instead. Each "
        "caption says which bars its plot has.")

PLOTS = (
    ("Slowdown", "slowdown.png", plot_slowdown),
    ("Cache hierarchy", "hierarchy.png", plot_hierarchy),
    ("Average memory access time", "amat.png", plot_amat),
    ("Time series", "timeseries.png", plot_timeseries),
)


# -- rendering -------------------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: Iterable[Block]) -> str:
    parts = []
    for b in blocks:
        if isinstance(b, Heading):
            parts.append(f"{'#' * b.level} {b.text}")
        elif isinstance(b, Text):
            parts.append(b.text)
        elif isinstance(b, Bullets):
            parts.append("\n".join(f"- {item}" for item in b.items))
        elif isinstance(b, Code):
            parts.append(f"```\n{b.text.rstrip()}\n```")
        elif isinstance(b, Table):
            lines = ["| " + " | ".join(_md_cell(h) for h in b.header) + " |",
                     "|" + "---|" * len(b.header)]
            lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in b.rows]
            parts.append("\n".join(lines))
        else:
            parts.append(f"![{b.alt}]({b.file})")
    return "\n\n".join(parts) + "\n"


STYLE = ("body{font-family:sans-serif;max-width:72rem;margin:1rem auto;padding:0 1rem}"
         "table{border-collapse:collapse;margin:0.5rem 0}th,td{border:1px solid #bbb;padding:2px 8px}"
         "pre{background:#f4f4f4;padding:0.5rem;overflow-x:auto}img{max-width:100%}")


def render_html(blocks: Iterable[Block], title: str) -> str:
    e = html.escape
    parts = ["<!DOCTYPE html>", '<html><head><meta charset="utf-8">', f"<title>{e(title)}</title>",
             f"<style>{STYLE}</style></head><body>"]
    for b in blocks:
        if isinstance(b, Heading):
            parts.append(f"<h{b.level}>{e(b.text)}</h{b.level}>")
        elif isinstance(b, Text):
            parts.append(f"<p>{e(b.text)}</p>")
        elif isinstance(b, Bullets):
            parts.append("<ul>" + "".join(f"<li>{e(item)}</li>" for item in b.items) + "</ul>")
        elif isinstance(b, Code):
            parts.append(f"<pre>{e(b.text)}</pre>")
        elif isinstance(b, Table):
            head = "".join(f"<th>{e(h)}</th>" for h in b.header)
            body = "".join("<tr>" + "".join(f"<td>{e(v)}</td>" for v in row) + "</tr>" for row in b.rows)
            parts.append(f"<table><tr>{head}</tr>{body}</table>")
        else:
            parts.append(f'<img src="{e(b.file)}" alt="{e(b.alt)}">')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(directory: str | Path, run_id: str | None = None) -> list[Path]:
    """Write ``<directory>/report/``; returns the files written (report.md, report.html, the plots).

    ``run_id`` picks the run of the time series; by default the first ok run with samples.
    A plot whose data is absent is skipped, said so in the report, and an old file of it removed.
    """
    directory = Path(directory)
    with Store.open_existing(directory) as store:
        c = load(store, run_id)
    out = directory / REPORT_DIR
    out.mkdir(exist_ok=True)
    blocks = [*header(c, directory), *runs_section(c), *summary_section(c), Heading("Plots"), Text(BARS)]
    written = []
    for title, file, plot in PLOTS:
        outcome = plot(c, out / file)
        blocks.append(Heading(title, 3))
        if outcome.drawn:
            written.append(out / file)
            blocks += [Image(file, title), Text(outcome.text)]
        else:
            (out / file).unlink(missing_ok=True)
            blocks.append(Text(f"Skipped: {outcome.text}."))
        if file == "hierarchy.png":
            blocks += hierarchy_table(c)
    md, page = out / "report.md", out / "report.html"
    md.write_text(render_markdown(blocks), encoding="utf-8")
    title = blocks[0].text if isinstance(blocks[0], Heading) else "Campaign report"
    page.write_text(render_html(blocks, title), encoding="utf-8")
    return [md, page, *written]
