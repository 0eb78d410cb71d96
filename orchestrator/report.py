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

A paced campaign (some run has a dilation k, see ``pacing.py``) is reported in
model time: the header says so (and lists the k's if runs differ), every
summary table gives each rate and duration twice, in model time and as the
guest measured it (column ``time``), the plots use model time and say so, and
runs whose lag is over ``pacing.LAG_LIMIT`` are counted in a warning near the
top and listed, flagged, under Runs. A campaign with no paced run reads as
before.

The remote latency is the first parameter (sorted) whose name ends with
``latency_ns``; a workload's primary metric is ``meta['primary.<workload>']``
or else its first metric alphabetically. The numbers come from pure functions
in ``report_stats.py`` (:func:`summarize`, :func:`interval`, :func:`group_runs`,
:func:`by_latency`, :func:`slowdowns`, :func:`as_rate`) and, for model time,
``results.py`` (:func:`to_model`); the text from a list of blocks rendered
once as Markdown and once as HTML, so both files say the same.
"""

from __future__ import annotations

import html
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display; must come before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402

from .errors import StateError  # noqa: E402
from .pacing import LAG_LIMIT  # noqa: E402
from .report_stats import (  # noqa: E402
    MIN_CI_N,
    Bar,
    BarKind,
    Group,
    LevelMean,
    Params,
    Series,
    Summary,
    as_rate,
    by_latency,
    describe_bars,
    group_runs,
    interval,
    latency_parameter,
    level_means,
    pick_counters,
    primary_metrics,
    slowdowns,
    varying,
)
from .results import (  # noqa: E402
    LevelRow,
    any_paced,
    is_lagged,
    levels,
    model_metrics,
    plugin_totals,
    sampled_runs,
    samples,
    time_scaling,
)
from .store import Store  # noqa: E402

REPORT_DIR = "report"


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
    groups: list[Group]  # in model time when paced
    levels: dict[str, list[LevelRow]]
    latency: str | None
    primary: dict[str, str]
    sample_run: str | None = None
    samples: dict[tuple[str, str], list[tuple[float, float]]] = field(default_factory=dict)
    paced: bool = False  # some run was paced
    guest_groups: list[Group] = field(default_factory=list)  # paced: the groups as the guest measured them

    def dilation(self, run_id: str | None) -> float | None:
        return next((r["dilation"] for r in self.runs if r["run_id"] == run_id), None)

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
    measured, info = store.metrics(), store.metric_info()
    paced = any_paced(runs)
    groups = group_runs(runs, model_metrics(runs, measured, info) if paced else measured)
    meta = store.meta()
    c = Campaign(meta=meta, runs=runs, info=info, groups=groups, levels=levels(store),
                 latency=latency_parameter(runs), primary=primary_metrics(meta, groups), paced=paced,
                 guest_groups=group_runs(runs, measured) if paced else [])
    c.sample_run = _sample_run(store, runs, run_id)
    if c.sample_run is not None:
        c.samples = samples(store, c.sample_run)
    return c


def _num(x: float) -> str:
    return f"{x:.6g}"


def _value(v: Any) -> str:
    return "" if v is None else str(v)


# -- paced mode ------------------------------------------------------------------------------------

LIMIT = f"{LAG_LIMIT * 100:g} %"
PACED_SUMMARY = (" Paced mode: the column time says on which clock. model: the guest's values in model time "
                 "(durations divided by k, rates multiplied by k); guest: as the guest measured them; same: a "
                 "metric that is neither a rate nor a duration (a count, say), the same on both.")


def _pct(fraction: float) -> str:
    return f"{fraction * 100:.3g} %"


def _dilations(c: Campaign) -> str:
    """``dilation k = 30``, or with runs at different k each with its number of runs."""
    ks = Counter(r["dilation"] for r in c.runs if r["dilation"] is not None)
    if len(ks) == 1:
        return f"dilation k = {next(iter(ks)):g}"
    return "dilations k = " + ", ".join(f"{k:g} ({n} runs)" for k, n in sorted(ks.items()))


def lagged_runs(runs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in runs if is_lagged(r["dilation"], r["lag_fraction"])]


def paced_header(c: Campaign) -> list[Block]:
    """What paced mode means for the numbers below and, if runs lagged, a warning; nothing when not paced."""
    if not c.paced:
        return []
    text = (f"Paced mode, {_dilations(c)}: the guest ran k times slower than the model machine, so the times "
            "and rates below are model time (the guest's durations divided by k, its rates multiplied by k); "
            "the values as the guest measured them are in the summary rows marked 'guest'.")
    unpaced = sum(r["dilation"] is None for r in c.runs)
    if unpaced:
        text += f" {unpaced} of {len(c.runs)} runs were not paced: their values are as measured."
    blocks: list[Block] = [Text(text)]
    lagged = lagged_runs(c.runs)
    if lagged:
        paced = len(c.runs) - unpaced
        blocks.append(Text(f"⚠ {len(lagged)} of {paced} paced runs LAGGED: their slowest vCPU fell behind its "
                           f"model clock by more than {LIMIT} of its model time. The host could not keep up "
                           "with k x model time, so their timings are not host-independent: raise the dilation "
                           "or quiet the host, and run them again. They are listed under Runs."))
    return blocks


def lag_section(c: Campaign) -> list[Block]:
    """The paced runs' lag: the largest, and every run over LAG_LIMIT with its lag and a flag."""
    measured = [r for r in c.runs if r["dilation"] is not None and r["lag_fraction"] is not None]
    if not measured:
        return []
    lagged = lagged_runs(measured)
    text = ("Lag: how far a run's slowest vCPU fell behind its model clock, beyond the plugin's catch-up "
            f"window, as a share of its model time; a run over {LIMIT} is LAGGED. ")
    if not lagged:
        worst = max(r["lag_fraction"] for r in measured)
        return [Text(text + f"No run lagged (the largest lag: {_pct(worst)}).")]
    rows = [[r["run_id"], r["status"], r["workload"], str(r["rep"]),
             ", ".join(f"{k}={v}" for k, v in sorted(r["params"].items())), f"{r['dilation']:g}",
             _pct(r["lag_fraction"]), "⚠ LAGGED"] for r in lagged]
    return [Text(text + f"{len(lagged)} of {len(measured)} runs lagged:"),
            Table(["run", "status", "workload", "rep", "parameters", "dilation", "lag", "flag"], rows)]


def header(c: Campaign, directory: Path) -> list[Block]:
    blocks: list[Block] = [Heading(f"Campaign {c.meta.get('name', directory.name)}", 1)]
    if "created" in c.meta:
        blocks.append(Text(f"Created {c.meta['created']}."))
    blocks += paced_header(c)
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
    return blocks + lag_section(c)


def _dash(x: float | None) -> str:
    return "–" if x is None else _num(x)


def summary_section(c: Campaign) -> list[Block]:
    blocks: list[Block] = [Heading("Summary"),
                           Text("Runs with status ok, grouped by workload and parameters, over repetitions: "
                                "n, mean, sample standard deviation, min, max and the half-width of the 95 % "
                                f"confidence interval of the mean (Student's t). ci95 is '–' under {MIN_CI_N} "
                                "repetitions: with 2, t = 12.7 and the interval says nothing; min and max say "
                                "what was measured. stdev is '–' for a single run." + PACED_SUMMARY * c.paced)]
    if not c.groups:
        return [*blocks, Text("No run ended ok.")]
    for workload in c.workloads():
        groups = c.workload_groups(workload)
        shown = varying(groups)
        fixed = [f"{k}={v}" for k, v in groups[0].params if k not in shown]
        blocks.append(Heading(workload, 3))
        if fixed:
            blocks.append(Text("Fixed: " + ", ".join(fixed) + "."))
        head = [*shown, "metric", *["time"] * c.paced, "unit", "better", "n", "mean", "stdev", "min", "max", "ci95"]
        blocks.append(Table(head, _summary_rows(c, groups, shown)))
        caption = _table_caption(c, workload)
        if caption:
            blocks.append(Text(caption))
    return blocks


def _stat_cells(s: Summary) -> list[str]:
    return [str(s.n), _num(s.mean), _dash(s.stdev), _num(s.low), _num(s.high), _dash(s.ci95)]


def _summary_rows(c: Campaign, groups: list[Group], shown: list[str]) -> list[list[str]]:
    """One row per group and metric; paced, a rate or a duration gets two: in model time, then as the
    guest measured it (from the same runs: c.guest_groups has the same groups)."""
    guest = {(g.workload, g.params): g for g in c.guest_groups}
    rows = []
    for g in groups:
        for m, s in g.values.items():
            unit, better = c.info.get(m, ("", ""))
            lead = [*(_value(g.param(p)) for p in shown), m]
            if not c.paced:
                rows.append([*lead, unit, better, *_stat_cells(s)])
            elif time_scaling(unit) is None:
                rows.append([*lead, "same", unit, better, *_stat_cells(s)])
            else:
                rows.append([*lead, "model", unit, better, *_stat_cells(s)])
                rows.append([*lead, "guest", unit, better,
                             *_stat_cells(guest[(g.workload, g.params)].values[m])])
    return rows


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
        unit = c.info.get(metric, ("", ""))[0]
        model = ", model time" if c.paced and time_scaling(unit) is not None else ""
        ax.set_ylabel(f"{metric} {unit}".strip() + model)
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
MODEL_TIME = " in model time"


def plot_slowdown(c: Campaign, path: Path) -> Outcome:
    if not c.primary:
        return Outcome(False, "no run ended ok with a metric")
    if c.latency is None:
        _plot_bars(c, path)
        bars = [b for w in c.workloads() if w in c.primary for _, b in _bar_plot_points(c, w)]
        return Outcome(True, f"No latency parameter: each workload's primary metric{MODEL_TIME * c.paced} per "
                             f"placement; {DOTS}, columns: the means; {describe_bars(bars)}.")
    per_workload = _slowdown_series(c)
    if not per_workload:
        return Outcome(False, f"no ok run has both a {c.latency} and its workload's primary metric")
    _plot_lines(c, per_workload, f"slowdown{MODEL_TIME * c.paced} (1 = lowest latency)", path)
    metrics = ", ".join(f"{w}: {c.primary[w]}" for w in per_workload)
    bars = [p.bar for series in per_workload.values() for s in series for p in s.points]
    return Outcome(True, f"Slowdown of the primary metric{MODEL_TIME * c.paced} ({metrics}) against {c.latency}, "
                         "relative to the "
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
    # the plugin's own model: its nanoseconds are model ns in any mode, and nothing to convert
    _plot_lines(c, per_workload, f"AMAT at the first level ({'model ' * c.paced}ns)", path)
    bars = [p.bar for series in per_workload.values() for s in series for p in s.points]
    return Outcome(True, f"Average memory access time seen at the first cache level against {c.latency}; "
                         f"{DOTS}, line: the means; {describe_bars(bars)}.")


def plot_timeseries(c: Campaign, path: Path) -> Outcome:
    if c.sample_run is None:
        return Outcome(False, "no ok run has samples")
    if not c.samples:
        return Outcome(False, f"run {c.sample_run} has no samples")
    chosen = pick_counters(c.samples)
    k = c.dilation(c.sample_run)  # samples are stamped in wall seconds: k x model seconds when paced
    second = "model second" if k else "second"
    fig, axes = _figure(len(chosen), width=9.0, height=2.2, ncols=1)
    for ax, (source, name) in zip(axes, chosen, strict=True):
        points, rate = as_rate([(t / (k or 1), v) for t, v in c.samples[(source, name)]])
        ax.plot([t for t, _ in points], [v for _, v in points], marker=".")
        ax.set_ylabel((f"{name} per model second" if k else f"{name} /s") if rate else name, fontsize="small")
        ax.set_title(f"{source}: {name}", fontsize="small")
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel(f"{second}s since the run started" + (" (wall seconds / k)" if k else ""))
    _save(fig, path)
    paced = f" Paced (k = {k:g}): time in model seconds, rates per model second." if k else ""
    return Outcome(True, f"Counters sampled during run {c.sample_run}; counters that only grow are shown "
                         f"as a rate per {second}.{paced}")


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


def mean_slowdowns(store: Store) -> dict[str, float]:
    """Every point of the slowdown plot with its mean slowdown (model time when paced), keyed
    ``<workload> [<its series' label>] <latency>=<value>``: two campaigns side by side (bench/paced.py)."""
    c = load(store)
    return {f"{s.workload} [{c.label(s.workload, s.key)}] {c.latency}={p.x:g}": p.y
            for series in _slowdown_series(c).values() for s in series for p in s.points}


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
