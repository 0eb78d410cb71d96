"""The campaign report: its statistics, slowdowns and time series by hand, then the files it writes.

The synthetic campaign (tests/unit/synthetic_store.py) follows formulas, so the
expected figures below are worked out from them.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from synthetic_store import ERROR, FAILED_ID, SAMPLES, TIMEOUT_ID, build, records

from orchestrator.errors import StateError
from orchestrator.report import (
    Group,
    as_rate,
    by_latency,
    group_runs,
    latency_parameter,
    level_means,
    pick_counters,
    primary_metrics,
    slowdowns,
    summarize,
    t95,
    write_report,
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


def test_summary_of_two() -> None:
    s = summarize([1800.0, 1810.0])
    assert s.n == 2 and s.mean == 1805.0
    assert s.stdev == pytest.approx(math.sqrt(50))  # ((-5)^2 + 5^2) / (2 - 1)
    assert s.ci95 == pytest.approx(12.706 * math.sqrt(50) / math.sqrt(2))  # = 63.53


def test_summary_of_one_and_of_many() -> None:
    assert summarize([3.0]) == summarize([3.0]).__class__(1, 3.0, 0.0, 0.0)
    many = summarize([0.0, 2.0] * 20)  # n = 40: normal quantile
    assert many.ci95 == pytest.approx(1.96 * many.stdev / math.sqrt(40))


def test_groups_pool_repetitions_of_ok_runs(groups: list[Group]) -> None:
    assert len(groups) == 2 * 2 * 3  # workloads x placements x latencies; failed and timeout left out
    s = find(groups, "stream", "remote", 200).values["triad_mb_s"]  # 1800 and 1810
    assert (s.n, s.mean) == (2, 1805.0) and s.stdev == pytest.approx(7.0710678) and s.ci95 == pytest.approx(63.53)
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


def test_slowdown_of_a_throughput(groups: list[Group]) -> None:
    series = {dict(s.key)["placement"]: s for s in slowdowns(groups, LAT, "triad_mb_s", "higher")}
    assert set(series) == {"local", "remote"}
    remote = series["remote"].points
    assert [p.y for p in remote] == pytest.approx([1.0, 1905 / 1805, 1905 / 1605])
    assert remote[1].error == pytest.approx(1905 * 63.53 / 1805**2)
    assert [p.y for p in series["local"].points] == pytest.approx([1.0, 2905 / 2805, 2905 / 2605])


def test_slowdown_of_a_time(groups: list[Group]) -> None:
    series = {dict(s.key)["placement"]: s for s in slowdowns(groups, LAT, "latency_ms", "lower")}
    remote = series["remote"].points  # means 2.05, 3.05, 5.05 ms; ci 12.706 * 0.05 each
    assert [p.y for p in remote] == pytest.approx([1.0, 3.05 / 2.05, 5.05 / 2.05])
    assert remote[2].error == pytest.approx(0.6353 / 2.05)


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
    assert "| 200 | remote | triad_mb_s | MB/s | higher | 2 | 1805 | 7.07107 | 63.53 |" in md
    assert "![Slowdown](slowdown.png)" in md and "Skipped" not in md
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
    assert "| 200 | remote | triad_mb_s | MB/s | higher | 1 | 1800 | – | – |" in md  # 2000 - 200 + 0


def test_html_is_escaped_and_self_contained(report: tuple[Path, list[Path]]) -> None:
    page = (report[0] / "report.html").read_text()
    assert "segfault in &lt;main&gt; &amp; friends" in page and "<main>" not in page
    assert '<img src="slowdown.png"' in page and '<img src="timeseries.png"' in page
    assert "<td>1805</td><td>7.07107</td><td>63.53</td>" in page
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
