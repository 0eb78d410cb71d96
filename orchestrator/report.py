"""The campaign report: ``<directory>/report/`` with report.md, report.html and PNG plots.

Everything comes from the store (``results.sqlite``), nothing from the testbed,
so a report can be redrawn anywhere, long after the blades are gone. It holds:

* the campaign (meta table), runs by status, and every failed or timed-out run
  with its error;
* per workload, each metric summarised over repetitions: runs of status ok are
  grouped by workload and every parameter; n, mean, sample stdev and the
  half-width of the 95% confidence interval (Student's t);
* plots, each skipped with a reason when its data is absent:
  ``slowdown.png`` (primary metric against remote latency, relative to the
  lowest latency), ``hierarchy.png`` (miss ratio per cache level),
  ``amat.png`` (average memory access time against latency) and
  ``timeseries.png`` (counters sampled during one run).

The remote latency is the first parameter (sorted) whose name ends with
``latency_ns``; a workload's primary metric is ``meta['primary.<workload>']``
or else its first metric alphabetically. The numbers come from pure functions
(:func:`summarize`, :func:`group_runs`, :func:`by_latency`, :func:`slowdowns`,
:func:`as_rate`), the text from a list of blocks rendered once as Markdown and
once as HTML, so both files say the same.
"""

from __future__ import annotations

import html
import json
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
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
    stdev: float  # sample standard deviation; 0 for one value
    ci95: float  # half-width of the 95% confidence interval of the mean


def summarize(values: Sequence[float]) -> Summary:
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return Summary(n, mean, 0.0, 0.0)
    stdev = statistics.stdev(values)
    return Summary(n, mean, stdev, t95(n - 1) * stdev / math.sqrt(n))


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
    y: float
    error: float  # half-width of the 95% CI


@dataclass(frozen=True)
class Series:
    """One line of a plot: a workload at fixed parameters (all but the latency)."""

    workload: str
    key: Params
    points: list[Point]


def _without(params: Params, name: str | None) -> Params:
    return tuple(p for p in params if p[0] != name)


def by_latency(groups: Iterable[Group], latency: str, metric: str) -> list[Series]:
    """Mean and CI of ``metric`` against the latency parameter, one series per workload and other parameters."""
    found: dict[tuple[str, Params], list[Point]] = {}
    for g in groups:
        x = _number(g.param(latency))
        s = g.values.get(metric)
        if x is None or s is None:
            continue
        found.setdefault((g.workload, _without(g.params, latency)), []).append(Point(x, s.mean, s.ci95))
    return [Series(w, key, sorted(points, key=lambda p: p.x)) for (w, key), points in found.items()]


def _slowdown(p: Point, baseline: float, better: str) -> Point:
    # The baseline is taken as exact; the error is the point's CI carried through to first order.
    if better == "lower":
        return Point(p.x, p.y / baseline, p.error / baseline)
    return Point(p.x, baseline / p.y, baseline * p.error / p.y**2)


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


def summary_section(c: Campaign) -> list[Block]:
    blocks: list[Block] = [Heading("Summary"),
                           Text("Runs with status ok, grouped by workload and parameters, over repetitions: "
                                "mean, sample standard deviation and half-width of the 95% confidence interval "
                                "(Student's t).")]
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
                + [m, *c.info.get(m, ("", "")), str(s.n), _num(s.mean),
                   *((_num(s.stdev), _num(s.ci95)) if s.n > 1 else ("–", "–"))]  # one run: no spread
                for g in groups for m, s in g.values.items()]
        blocks.append(Table([*shown, "metric", "unit", "better", "n", "mean", "stdev", "ci95"], rows))
    return blocks


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


def _plot_lines(c: Campaign, per_workload: dict[str, list[Series]], ylabel: str, path: Path) -> None:
    fig, axes = _figure(len(per_workload))
    for ax, (workload, series) in zip(axes, per_workload.items(), strict=True):
        for s in series:
            ax.errorbar([p.x for p in s.points], [p.y for p in s.points], yerr=[p.error for p in s.points],
                        marker="o", capsize=3, label=c.label(workload, s.key))
        ax.set_title(workload)
        ax.set_xlabel(c.latency or "")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    _save(fig, path)


def _plot_bars(c: Campaign, path: Path) -> None:
    workloads = [w for w in c.workloads() if w in c.primary]
    fig, axes = _figure(len(workloads))
    for ax, workload in zip(axes, workloads, strict=True):
        metric = c.primary[workload]
        groups = [g for g in c.workload_groups(workload) if metric in g.values]
        labels = [c.label(workload, g.params) for g in groups]
        ax.bar(range(len(groups)), [g.values[metric].mean for g in groups],
               yerr=[g.values[metric].ci95 for g in groups], capsize=3)
        ax.set_xticks(range(len(groups)), labels, rotation=30, ha="right", fontsize="small")
        ax.set_title(f"{workload}: {metric} per placement")
        ax.set_ylabel(f"{metric} {c.info.get(metric, ('', ''))[0]}".strip())
    _save(fig, path)


def plot_slowdown(c: Campaign, path: Path) -> Outcome:
    if not c.primary:
        return Outcome(False, "no run ended ok with a metric")
    if c.latency is None:
        _plot_bars(c, path)
        return Outcome(True, "No latency parameter: each workload's primary metric per placement "
                             "(mean, error bars the 95% CI).")
    per_workload = {}
    for workload, metric in c.primary.items():
        better = c.info.get(metric, ("", "higher"))[1]
        series = slowdowns(c.workload_groups(workload), c.latency, metric, better)
        if series:
            per_workload[workload] = series
    if not per_workload:
        return Outcome(False, f"no ok run has both a {c.latency} and its workload's primary metric")
    _plot_lines(c, per_workload, "slowdown (1 = lowest latency)", path)
    metrics = ", ".join(f"{w}: {c.primary[w]}" for w in per_workload)
    return Outcome(True, f"Slowdown of the primary metric ({metrics}) against {c.latency}, relative to the "
                         "lowest latency of the same placement and parameters; error bars: 95% CI.")


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
    return Outcome(True, f"Average memory access time seen at the first cache level against {c.latency}; "
                         "error bars: 95% CI.")


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
    blocks = [*header(c, directory), *runs_section(c), *summary_section(c), Heading("Plots")]
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
