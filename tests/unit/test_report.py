"""The campaign report: its statistics, slowdowns and time series by hand, then the files it writes.

The synthetic campaign (tests/unit/synthetic_store.py) follows formulas, so the
expected figures below are worked out from them.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import pytest
from synthetic_store import DILATION, ERROR, FAILED_ID, LAGGED_ID, SAMPLES, TIMEOUT_ID, build, records

from orchestrator import report as report_module
from orchestrator.errors import StateError
from orchestrator.report import mean_slowdowns, write_report
from orchestrator.report_stats import (
    Bar,
    BarKind,
    Group,
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
    summarize,
    t95,
)
from orchestrator.results import levels
from orchestrator.store import RunRecord, Store

PNG = b"\x89PNG\r\n\x1a\n"
LAT = "mb0.latency_ns"


@pytest.fixture
def groups(tmp_path: Path) -> list[Group]:
    with build(tmp_path) as store:
        return group_runs(store.runs(), store.metrics())


def find(groups: list[Group], workload: str, placement: str, latency: int) -> Group:
    [g] = [g for g in groups if g.workload == workload and g.param("placement") == placement
           and g.param(LAT) == latency]
    return g


# -- statistics ------------------------------------------------------------------------------------


def test_t_table() -> None:
    assert t95(1) == 12.706 and t95(9) == 2.262 and t95(30) == 2.042 and t95(31) == 1.96


def test_summary_of_two_has_no_interval() -> None:
    s = summarize([1810.0, 1800.0])
    assert s.n == 2 and s.mean == 1805.0 and (s.low, s.high) == (1800.0, 1810.0) and s.values == (1810.0, 1800.0)
    assert s.stdev == pytest.approx(math.sqrt(50))  # ((-5)^2 + 5^2) / (2 - 1)
    assert s.ci95 is None  # it would be 12.706 * sqrt(50) / sqrt(2) = 63.5: wider than the data by far


def test_summary_of_one_three_and_many() -> None:
    assert summarize([3.0]) == Summary(1, 3.0, None, None, 3.0, 3.0, (3.0,))
    three = summarize([1.0, 2.0, 3.0])
    assert (three.mean, three.stdev, three.low, three.high) == (2.0, 1.0, 1.0, 3.0)
    assert three.ci95 == pytest.approx(4.303 / math.sqrt(3))
    many = summarize([0.0, 2.0] * 20)  # n = 40: normal quantile
    assert many.stdev is not None and many.ci95 == pytest.approx(1.96 * many.stdev / math.sqrt(40))


def test_bars_for_one_two_and_three_repetitions() -> None:
    assert interval(summarize([5.0])) == Bar(BarKind.NONE, 1, 5.0, 5.0)
    assert interval(summarize([5.0, 9.0])) == Bar(BarKind.MINMAX, 2, 5.0, 9.0)
    half = 4.303 * 1.0 / math.sqrt(3)  # stdev 1
    bar = interval(summarize([9.0, 10.0, 11.0]))
    assert bar.kind is BarKind.T95 and bar.n == 3
    assert (bar.low, bar.high) == pytest.approx((10.0 - half, 10.0 + half))
    many = interval(summarize([9.0, 11.0] * 20))  # stdev sqrt(40 / 39), normal quantile
    half = 1.96 * math.sqrt(40 / 39) / math.sqrt(40)
    assert many.kind is BarKind.T95 and (many.low, many.high) == pytest.approx((10 - half, 10 + half))


def test_an_interval_that_would_reach_zero_is_not_drawn() -> None:
    wide = summarize([1.0, 2.0, 9.0])  # mean 4, stdev 4.36, half-width 10.8: down to -6.8
    assert wide.ci95 is not None and wide.mean - wide.ci95 < 0
    assert interval(wide) == Bar(BarKind.MINMAX_FLOOR, 3, 1.0, 9.0), "a time or a rate: min-max instead"
    free = interval(wide, positive=False)  # a quantity that may be negative keeps its interval
    assert free.kind is BarKind.T95 and free.low == pytest.approx(4.0 - wide.ci95)


def test_describe_bars() -> None:
    two, three = Bar(BarKind.MINMAX, 2, 0, 1), Bar(BarKind.T95, 3, 0, 1)
    assert describe_bars([two, two]) == "bars: min-max of 2 repetitions"
    assert describe_bars([three]) == "bars: 95 % t-interval of 3 repetitions"
    assert describe_bars([two, three, three, Bar(BarKind.NONE, 1, 0, 0), Bar(BarKind.MINMAX_FLOOR, 4, 0, 1)]) == (
        "bars: 95 % t-interval of 3 repetitions at 2 points; min-max of 4 repetitions (their 95 % t-interval "
        "would reach 0 or below) at 1 point; min-max of 2 repetitions at 1 point; none (1 repetition: the point "
        "alone) at 1 point")


def test_groups_pool_repetitions_of_ok_runs(groups: list[Group]) -> None:
    assert len(groups) == 2 * 2 * 3  # workloads x placements x latencies; failed and timeout left out
    s = find(groups, "stream", "remote", 200).values["triad_mb_s"]  # 1800 and 1810
    assert (s.n, s.mean, s.low, s.high) == (2, 1805.0, 1800, 1810) and s.stdev == pytest.approx(7.0710678)
    assert s.ci95 is None
    assert find(groups, "stream", "remote", 400).values["triad_mb_s"].n == 2  # rep 2 failed
    assert find(groups, "sysbench", "local", 100).values["latency_ms"].n == 2  # rep 2 timed out
    assert set(find(groups, "sysbench", "local", 100).values) == {"events", "latency_ms", "threads"}


def test_latency_parameter_and_primary_metric(groups: list[Group]) -> None:
    runs = [{"params": {"mb1.latency_ns": 1, "mb0.latency_ns": 2, "placement": "x"}}, {"params": {"threads": 1}}]
    assert latency_parameter(runs) == "mb0.latency_ns"
    assert latency_parameter([{"params": {"threads": 1}}]) is None
    assert primary_metrics({"primary.sysbench": "latency_ms"}, groups) == {"stream": "triad_mb_s",
                                                                           "sysbench": "latency_ms"}
    assert primary_metrics({"primary.sysbench": "gone"}, groups)["sysbench"] == "events"  # first by name


# -- slowdown --------------------------------------------------------------------------------------


def test_by_latency_is_sorted_and_keyed_without_latency(groups: list[Group]) -> None:
    [remote] = [s for s in by_latency(groups, LAT, "triad_mb_s") if dict(s.key)["placement"] == "remote"]
    assert remote.workload == "stream" and LAT not in dict(remote.key)
    assert [(p.x, p.y) for p in remote.points] == [(100, 1905.0), (200, 1805.0), (400, 1605.0)]
    assert remote.points[1].values == (1800, 1810)
    assert remote.points[1].bar == Bar(BarKind.MINMAX, 2, 1800, 1810)


def test_slowdown_of_a_throughput(groups: list[Group]) -> None:
    series = {dict(s.key)["placement"]: s for s in slowdowns(groups, LAT, "triad_mb_s", "higher")}
    assert set(series) == {"local", "remote"}
    remote = series["remote"].points
    assert [p.y for p in remote] == pytest.approx([1.0, 1905 / 1805, 1905 / 1605])
    # 2 repetitions (1800 and 1810 MB/s): each is a point, the bar spans them; a rate's slowdown is baseline / value
    assert remote[1].values == pytest.approx((1905 / 1800, 1905 / 1810))
    assert remote[1].bar.kind is BarKind.MINMAX
    assert (remote[1].bar.low, remote[1].bar.high) == pytest.approx((1905 / 1810, 1905 / 1800))
    assert [p.y for p in series["local"].points] == pytest.approx([1.0, 2905 / 2805, 2905 / 2605])


def test_slowdown_of_a_time(groups: list[Group]) -> None:
    series = {dict(s.key)["placement"]: s for s in slowdowns(groups, LAT, "latency_ms", "lower")}
    remote = series["remote"].points  # means 2.05, 3.05, 5.05 ms, each of 2 runs 0.1 ms apart
    assert [p.y for p in remote] == pytest.approx([1.0, 3.05 / 2.05, 5.05 / 2.05])
    assert remote[2].values == pytest.approx((5.0 / 2.05, 5.1 / 2.05))
    assert remote[2].bar.kind is BarKind.MINMAX
    assert (remote[2].bar.low, remote[2].bar.high) == pytest.approx((5.0 / 2.05, 5.1 / 2.05))


def reps(workload: str, data: dict[int, list[float]]) -> list[Group]:
    """Groups of metric ``m`` at each latency, one repetition per value."""
    runs, values = [], {}
    for latency, reps in data.items():
        for rep, v in enumerate(reps):
            run_id = f"{workload}-{latency}-r{rep}"
            runs.append({"run_id": run_id, "status": "ok", "workload": workload, "params": {LAT: latency}})
            values[run_id] = {"m": v}
    return group_runs(runs, values)


def test_slowdown_interval_of_three_repetitions_maps_its_ends() -> None:
    """With 3 repetitions the bar is the t-interval of the mean, its ends mapped through the ratio
    (exact, and asymmetric for a rate), not a first-order error."""
    half = 4.303 * 2 / math.sqrt(3)  # stdev 2
    groups = reps("w", {100: [99.0, 100.0, 101.0], 400: [48.0, 50.0, 52.0]})
    [rate] = slowdowns(groups, LAT, "m", "higher")
    slow = rate.points[1]
    assert slow.y == pytest.approx(2.0) and slow.bar.kind is BarKind.T95
    assert (slow.bar.low, slow.bar.high) == pytest.approx((100 / (50 + half), 100 / (50 - half)))
    assert slow.values == pytest.approx((100 / 48, 2.0, 100 / 52))
    [time] = slowdowns(groups, LAT, "m", "lower")
    assert (time.points[1].bar.low, time.points[1].bar.high) == pytest.approx(((50 - half) / 100, (50 + half) / 100))


def test_no_bar_reaches_an_impossible_slowdown() -> None:
    """The demo's redis: 2 repetitions far apart gave a t-interval down to a slowdown of -3. Now every bar,
    whatever the repetitions, stays within (0, inf) and within the repetitions when it is min-max."""
    demo = reps("redis", {250: [2400.0, 2500.0], 5000: [1100.0, 2300.0]})
    [s] = slowdowns(demo, LAT, "m", "higher")
    bar = s.points[1].bar
    assert bar.kind is BarKind.MINMAX and (bar.low, bar.high) == pytest.approx((2450 / 2300, 2450 / 1100))
    rng = random.Random(15)
    for _ in range(300):
        data = {lat: [rng.choice((0.01, 1.0, 100.0)) * rng.random() + 1e-6 for _ in range(rng.randint(1, 6))]
                for lat in (100, 200, 400)}
        for better in ("higher", "lower"):
            for series in slowdowns(reps("w", data), LAT, "m", better):
                for p in series.points:
                    assert 0 < p.bar.low <= p.y <= p.bar.high < math.inf, (data, p)
                    if p.bar.kind is not BarKind.T95:
                        assert (p.bar.low, p.bar.high) == (min(p.values), max(p.values))


# -- hierarchy and time series ---------------------------------------------------------------------


def test_level_means(tmp_path: Path) -> None:
    with build(tmp_path) as store:
        means = level_means(store.runs(), levels(store), LAT)
    assert {m.workload for m in means} == {"stream"}
    assert [(m.level, dict(m.key)["placement"]) for m in means] == [
        ("l1d", "local"), ("l2", "local"), ("llc", "local"), ("l1d", "remote"), ("l2", "remote"), ("llc", "remote")]
    assert (means[0].hits, means[0].misses) == (475, 50)  # reps 0 and 1 over 3 latencies
    assert means[0].miss_ratio == pytest.approx((50 / 500 + 50 / 550) / 2)


def test_growing_counters_become_rates() -> None:
    injected = [(t, v) for t, s, n, v in SAMPLES if n == "injected_ns"]
    assert as_rate(injected) == ([(1.0, 1000.0), (2.0, 1000.0), (3.0, 1000.0)], True)
    free = [(t, v) for t, s, n, v in SAMPLES if n == "nr_free_pages"]
    assert as_rate(free) == (free, False)
    assert as_rate([(0.0, 7.0), (1.0, 7.0)]) == ([(0.0, 7.0), (1.0, 7.0)], False)


def test_pick_counters_prefers_the_interesting_ones() -> None:
    keys = [("guest", "nr_free_pages"), ("guest", "numa_hit"), ("plugin", "node1.memory"), ("plugin", "injected_ns")]
    assert pick_counters(keys) == [("plugin", "injected_ns"), ("plugin", "node1.memory"), ("guest", "numa_hit"),
                                   ("guest", "nr_free_pages")]
    assert len(pick_counters([("guest", f"c{i}") for i in range(9)])) == 6


# -- the files -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    directory = tmp_path_factory.mktemp("campaign")
    build(directory).close()
    return directory / "report", write_report(directory)


def test_report_writes_markdown_html_and_four_plots(report: tuple[Path, list[Path]]) -> None:
    out, written = report
    names = ["report.md", "report.html", "slowdown.png", "hierarchy.png", "amat.png", "timeseries.png"]
    assert written == [out / n for n in names]
    for png in written[2:]:
        assert png.read_bytes()[:8] == PNG and png.stat().st_size > 1000


def test_markdown_content(report: tuple[Path, list[Path]]) -> None:
    md = (report[0] / "report.md").read_text()
    assert md.startswith("# Campaign synthetic\n")
    assert "26 runs: 24 ok, 1 failed, 1 timeout." in md
    assert FAILED_ID in md and ERROR in md and TIMEOUT_ID in md and "no answer after 120 s" in md
    assert "Fixed: scale=1, threads=2." in md  # stream: only latency and placement vary
    assert "| placement | metric | unit | better | n | mean | stdev | min | max | ci95 |" in md.replace(
        "| mb0.latency_ns ", "")
    assert "| 200 | remote | triad_mb_s | MB/s | higher | 2 | 1805 | 7.07107 | 1800 | 1810 | – |" in md
    assert "ci95 is '–' under 3 repetitions" in md
    assert "In the slowdown plot (triad_mb_s): bars: min-max of 2 repetitions." in md  # the table's caption
    assert "![Slowdown](slowdown.png)\n\nSlowdown of the primary metric" in md
    assert md.count("; dots: each repetition, line: the means; bars: min-max of 2 repetitions.") == 2  # and AMAT
    assert "Skipped" not in md and "95% CI" not in md
    assert "Counters sampled during run stream-local-400-r1" in md  # the sampled run with the most injected ns
    assert "- campaign_file: /campaigns/synthetic.yaml\n" in md and "- primary.sysbench: latency_ms\n" in md
    assert "### campaign_yaml\n\n```\nname: synthetic\nworkloads: [stream, sysbench]\n```" in md  # verbatim


def test_one_run_per_point_has_no_spread(tmp_path: Path) -> None:
    store = Store(tmp_path)
    for r in records():
        if r.rep == 0:
            store.save(r)
    store.close()
    write_report(tmp_path)
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| 200 | remote | triad_mb_s | MB/s | higher | 1 | 1800 | – | 1800 | 1800 | – |" in md  # 2000 - 200 + 0
    assert "bars: none (1 repetition: the point alone)." in md


def test_three_repetitions_get_intervals(tmp_path: Path) -> None:
    store = Store(tmp_path)
    for r in records():
        if r.workload == "stream" and r.status == "ok":
            for rep in (0, 1, 2):  # the synthetic values, rep 2 at + 20 MB/s
                value = r.metrics[0][1] + 10 * (rep - r.rep)
                store.save(RunRecord(**{**r.__dict__, "run_id": f"{r.run_id[:-3]}-{rep}", "rep": rep,
                                        "metrics": [("triad_mb_s", value, "MB/s", "higher")]}))
    store.close()
    write_report(tmp_path)
    md = (tmp_path / "report" / "report.md").read_text()
    half = 4.303 * 10 / math.sqrt(3)  # 1800, 1810, 1820: stdev 10
    assert f"| 200 | remote | triad_mb_s | MB/s | higher | 3 | 1810 | 10 | 1800 | 1820 | {half:.6g} |" in md
    assert "In the slowdown plot (triad_mb_s): bars: 95 % t-interval of 3 repetitions." in md


def test_html_is_escaped_and_self_contained(report: tuple[Path, list[Path]]) -> None:
    page = (report[0] / "report.html").read_text()
    assert "segfault in &lt;main&gt; &amp; friends" in page and "<main>" not in page
    assert '<img src="slowdown.png"' in page and '<img src="timeseries.png"' in page
    assert "<td>1805</td><td>7.07107</td><td>1800</td><td>1810</td><td>–</td>" in page
    assert "<p>In the slowdown plot (triad_mb_s): bars: min-max of 2 repetitions.</p>" in page
    assert "line: the means; bars: min-max of 2 repetitions.</p>" in page
    assert "http" not in page and "<script" not in page and "<link" not in page


def test_time_series_of_a_chosen_run(tmp_path: Path) -> None:
    build(tmp_path).close()
    write_report(tmp_path, run_id="stream-local-400-r1")
    assert "Counters sampled during run stream-local-400-r1" in (tmp_path / "report" / "report.md").read_text()
    written = write_report(tmp_path, run_id="sysbench-local-100-r0")  # no samples: skipped, old plot removed
    assert "Skipped: run sysbench-local-100-r0 has no samples." in (tmp_path / "report" / "report.md").read_text()
    assert tmp_path / "report" / "timeseries.png" not in written
    assert not (tmp_path / "report" / "timeseries.png").exists()
    with pytest.raises(StateError, match="nope"):
        write_report(tmp_path, run_id="nope")


def test_without_plugin_or_latency(tmp_path: Path) -> None:
    store = Store(tmp_path)
    for r in records():
        if r.workload == "sysbench":
            r.params = {k: v for k, v in r.params.items() if k != LAT}
            r.run_id = f"{r.run_id}-{r.seq}"  # latencies folded: keep ids apart
            store.save(RunRecord(**{**r.__dict__, "samples": []}))
    store.close()
    written = write_report(tmp_path)
    md = (tmp_path / "report" / "report.md").read_text()
    assert [p.name for p in written] == ["report.md", "report.html", "slowdown.png"]
    assert "No latency parameter: each workload's primary metric per placement" in md
    assert "# Campaign " + tmp_path.name in md  # no name in meta
    assert "Skipped: no ok run has cache-level statistics" in md and "Skipped: no ok run has samples." in md
    assert md.count("Skipped") == 3


def test_what_the_slowdown_plot_draws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One series with 3 good repetitions, 3 whose interval would reach 0, 2, and 1: read back from the axes
    the dots, the bar ends and their style."""
    data = {250: [100.0, 110.0, 105.0], 1000: [90.0, 20.0, 95.0], 2500: [80.0, 60.0], 5000: [30.0]}
    store = Store(tmp_path)
    for seq, (latency, rep, value) in enumerate((lat, r, v) for lat, vs in data.items() for r, v in enumerate(vs)):
        store.save(RunRecord(run_id=f"redis-{latency}-r{rep}", seq=seq, workload="redis", rep=rep,
                             params={LAT: latency}, status="ok", blade="cb0", command="redis-benchmark",
                             started=0.0, finished=1.0, metrics=[("rps", value, "req/s", "higher")]))
    with store:
        campaign = report_module.load(store)
    figures: list[Any] = []
    monkeypatch.setattr(report_module, "_save", lambda fig, path: figures.append(fig))
    outcome = report_module.plot_slowdown(campaign, tmp_path / "slowdown.png")
    [ax] = figures[0].axes
    dots = [line for line in ax.get_lines() if line.get_marker() == "o"]
    assert sorted(y for line in dots for y in line.get_ydata()) == pytest.approx(
        sorted(105 / v for vs in data.values() for v in vs)), "every repetition is a dot"
    [mean_line] = [line for line in ax.get_lines() if line.get_linestyle() != "None"]
    assert list(mean_line.get_ydata()) == pytest.approx([1.0, 105 / (205 / 3), 105 / 70, 105 / 30])
    bars: dict[float, tuple[float, float, str]] = {}
    for collection in ax.collections:
        style = "dotted" if collection.get_linestyle()[0][1] is not None else "solid"
        for segment in collection.get_segments():
            (x, y0), (_, y1) = segment
            bars[x] = (min(y0, y1), max(y0, y1), style)
    half = 4.303 * 5 / math.sqrt(3)  # 100, 110, 105: stdev 5
    assert set(bars) == {250, 1000, 2500}, "one repetition (5000 ns): no bar"
    assert bars[250][:2] == pytest.approx((105 / (105 + half), 105 / (105 - half))) and bars[250][2] == "solid"
    assert bars[1000][:2] == pytest.approx((105 / 95, 105 / 20))  # its t-interval reaches below 0 req/s
    assert bars[2500][:2] == pytest.approx((105 / 80, 105 / 60))  # 2 repetitions: min-max
    assert bars[1000][2] == bars[2500][2] == "dotted"
    assert min(low for low, _, _ in bars.values()) > 0
    assert outcome.text.endswith(
        "bars: 95 % t-interval of 3 repetitions at 1 point; min-max of 3 repetitions (their 95 % t-interval would "
        "reach 0 or below) at 1 point; min-max of 2 repetitions at 1 point; none (1 repetition: the point alone) "
        "at 1 point.")


def test_mean_slowdowns(tmp_path: Path) -> None:
    with build(tmp_path) as store:
        means = mean_slowdowns(store)
    assert len(means) == 12  # 2 workloads x 2 placements x 3 latencies
    assert means["stream [placement=remote] mb0.latency_ns=100"] == 1.0
    assert means["stream [placement=remote] mb0.latency_ns=400"] == pytest.approx(1905 / 1605)
    assert means["sysbench [placement=local] mb0.latency_ns=400"] == pytest.approx(4.55 / 1.55)


# -- paced mode ------------------------------------------------------------------------------------

HEADER = ("Paced mode, dilation k = 30: the guest ran k times slower than the model machine, so the times and "
          "rates below are model time (the guest's durations divided by k, its rates multiplied by k); the values "
          "as the guest measured them are in the summary rows marked 'guest'.")


@pytest.fixture(scope="module")
def paced_md(tmp_path_factory: pytest.TempPathFactory) -> str:
    directory = tmp_path_factory.mktemp("paced")
    build(directory, paced=True).close()
    write_report(directory)
    return (directory / "report" / "report.md").read_text()


def test_paced_header_and_lag_warning(paced_md: str) -> None:
    title, created, paced, warning = paced_md.split("\n\n")[:4]
    assert (title, created, paced) == ("# Campaign synthetic", "Created 2024-05-01T12:00:00.", HEADER)
    assert warning.startswith("⚠ 1 of 26 paced runs LAGGED: their slowest vCPU fell behind its model clock by "
                              "more than 1 % of its model time. The host could not keep up with k x model time")
    assert "raise the dilation or quiet the host" in warning


def test_not_paced_says_nothing_of_it(report: tuple[Path, list[Path]]) -> None:
    md = (report[0] / "report.md").read_text()
    assert "Paced" not in md and "model" not in md and "LAGGED" not in md and "Lag:" not in md
    assert "| time |" not in md and "| guest |" not in md


def test_paced_summary_in_model_and_guest_time(paced_md: str) -> None:
    head = "| mb0.latency_ns | placement | metric | time | unit | better | n | mean | stdev | min | max | ci95 |"
    assert paced_md.count(head) == 2
    # stream remote 200: 1800 and 1810 MB/s in the guest, x 30 in model time
    assert "| 200 | remote | triad_mb_s | model | MB/s | higher | 2 | 54150 | 212.132 | 54000 | 54300 | – |\n" \
           "| 200 | remote | triad_mb_s | guest | MB/s | higher | 2 | 1805 | 7.07107 | 1800 | 1810 | – |" in paced_md
    # sysbench local 100: 1.5 and 1.6 ms in the guest, / 30 in model time; events have no unit
    model = " | ".join(f"{v:.6g}" for v in (1.55 / 30, math.sqrt(0.005) / 30, 1.5 / 30, 1.6 / 30))
    assert f"| 100 | local | latency_ms | model | ms | lower | 2 | {model} | – |" in paced_md
    assert "| 100 | local | latency_ms | guest | ms | lower | 2 | 1.55 | 0.0707107 | 1.5 | 1.6 | – |" in paced_md
    assert "| 100 | local | events | same |  | higher | 2 | 645.833 |" in paced_md
    assert paced_md.count("| events |") == 6, "a metric without a time unit has one row"
    assert "Paced mode: the column time says on which clock." in paced_md


def test_a_lagged_run_is_flagged(paced_md: str) -> None:
    runs = paced_md[paced_md.index("## Runs"):paced_md.index("## Summary")]
    assert "a run over 1 % is LAGGED. 1 of 26 runs lagged:" in runs
    assert (f"| {LAGGED_ID} | ok | sysbench | 1 | mb0.latency_ns=400, placement=remote, scale=1.5, size=1G, "
            "threads=4 | 30 | 3.4 % | ⚠ LAGGED |") in runs
    assert runs.count("LAGGED") == 2  # the sentence and the one flag


def test_different_dilations_and_no_lag(tmp_path: Path) -> None:
    with build(tmp_path, paced=True, stream_dilation=20.0) as store:
        store.db.execute("UPDATE runs SET lag_fraction = 0.004 WHERE run_id = ?", (LAGGED_ID,))
    write_report(tmp_path)
    md = (tmp_path / "report" / "report.md").read_text()
    assert "Paced mode, dilations k = 20 (13 runs), 30 (13 runs): the guest ran k times slower" in md
    assert "⚠" not in md and "No run lagged (the largest lag: 0.4 %)." in md
    assert "| 200 | remote | triad_mb_s | model | MB/s | higher | 2 | 36100 |" in md  # 1805 x 20


def test_paced_plots_are_in_model_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two points with the same rate in the guest, at k = 10 and 20: the same in the guest, twice as fast
    in model time, so the slowdown plot shows 0.5 at the second."""
    store = Store(tmp_path)
    for seq, (latency, k) in enumerate(((250, 10.0), (1000, 20.0))):
        store.save(RunRecord(run_id=f"redis-{latency}", seq=seq, workload="redis", rep=0, params={LAT: latency},
                             status="ok", blade="cb0", command="redis-benchmark", started=0.0, finished=1.0,
                             dilation=k, lag_ns=0, lag_fraction=0.0, metrics=[("rps", 100.0, "req/s", "higher")]))
    with store:
        campaign = report_module.load(store)
    figures: list[Any] = []
    monkeypatch.setattr(report_module, "_save", lambda fig, path: figures.append(fig))
    outcome = report_module.plot_slowdown(campaign, tmp_path / "slowdown.png")
    [ax] = figures[0].axes
    [mean_line] = [line for line in ax.get_lines() if line.get_linestyle() != "None"]
    assert list(mean_line.get_ydata()) == [1.0, 0.5]
    assert ax.get_ylabel() == "slowdown in model time (1 = lowest latency)"
    assert outcome.text.startswith("Slowdown of the primary metric in model time (redis: rps)")


def test_paced_time_series_in_model_seconds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with build(tmp_path, paced=True) as store:
        campaign = report_module.load(store, run_id="stream-local-200-r0")
    figures: list[Any] = []
    monkeypatch.setattr(report_module, "_save", lambda fig, path: figures.append(fig))
    outcome = report_module.plot_timeseries(campaign, tmp_path / "timeseries.png")
    injected = next(ax for ax in figures[0].axes if ax.get_title() == "plugin: injected_ns")
    [line] = injected.get_lines()
    assert list(line.get_xdata()) == pytest.approx([1 / DILATION, 2 / DILATION, 3 / DILATION])
    assert list(line.get_ydata()) == pytest.approx([1000 * DILATION] * 3)  # 1000 per wall second
    assert injected.get_ylabel() == "injected_ns per model second"
    assert figures[0].axes[-1].get_xlabel() == "model seconds since the run started (wall seconds / k)"
    assert outcome.text.endswith("Paced (k = 30): time in model seconds, rates per model second.")
