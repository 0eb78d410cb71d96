"""Parsers of what a run collects, on output recorded in a real guest."""

from __future__ import annotations

import json

from orchestrator import collect
from orchestrator.execute import _parse_mark, _span
from orchestrator.hierarchy import figures
from orchestrator.store import RunRecord
from tests.conftest import DATA

SNAPSHOT = (DATA / "guest" / "snapshot.txt").read_text()
SAMPLES = (DATA / "guest" / "samples.txt").read_text()


def test_snapshot_has_vmstat_numastat_and_meminfo_per_node() -> None:
    c = collect.parse_snapshot(SNAPSHOT)
    assert c[("vmstat", None, "numa_hit")] == 43260
    assert c[("vmstat", None, "numa_miss")] == 0
    assert c[("numastat", 0, "numa_hit")] == 41844
    assert c[("numastat", 1, "numa_hit")] == 1427
    # meminfo is per node, in bytes
    assert c[("meminfo", 0, "MemTotal")] > 900 << 20
    assert 1000 << 20 < c[("meminfo", 1, "MemTotal")] <= 1 << 30
    assert ("meminfo", 2, "MemTotal") not in c
    assert not any(k[0] == "vmstat" and k[2].startswith("nr_") and k[2] != "nr_free_pages" for k in c)


def test_pair_gives_before_after_for_every_key() -> None:
    before = {("vmstat", None, "numa_hit"): 10.0, ("numastat", 1, "numa_hit"): 5.0}
    after = {("vmstat", None, "numa_hit"): 25.0, ("vmstat", None, "pgmigrate_success"): 3.0}
    rows = collect.pair(before, after)
    assert ("numastat", 1, "numa_hit", 5.0, None) in rows
    assert ("vmstat", None, "numa_hit", 10.0, 25.0) in rows
    assert ("vmstat", None, "pgmigrate_success", None, 3.0) in rows


def test_samples_are_relative_to_the_start() -> None:
    first_t = float(SAMPLES.split()[1])
    rows = collect.parse_samples(SAMPLES, first_t - 2.0)
    times = sorted({t for t, *_ in rows})
    assert times[0] == 2.0
    assert len(times) == SAMPLES.count("@t ")
    assert all(src == "guest" for _, src, _, _ in rows)
    assert any(name == "numa_hit" and value > 0 for _, _, name, value in rows)


def test_plugin_sample_flattens_totals() -> None:
    stats = json.loads((DATA / "plugin" / "cb0-stats.json").read_text())
    s = collect.plugin_sample(stats)
    total = stats["total"]
    assert s["insns"] == total["insns"]
    assert s["injected_ns"] == total["injected_ns"]
    assert s["llc.misses"] == total["levels"]["llc"]["misses"]
    assert s["node1.memory"] == next(n["memory"] for n in total["nodes"] if n["node"] == 1)


def test_level_and_node_rows() -> None:
    stats = json.loads((DATA / "plugin" / "cb0-stats.json").read_text())
    fig = figures(stats, {"l1d": 1, "l2": 4, "llc": 12}, {0: 100, 1: 250})
    levels = collect.level_rows(fig)
    assert [lv[0] for lv in levels] == ["l1d", "l2", "llc"]
    name, hits, misses, ratio, hit_ns, amat = levels[0]
    assert ratio == misses / (hits + misses)
    assert hit_ns == 1 and amat > 1
    nodes = collect.node_rows(fig, {0: 100, 1: 250})
    assert {n[0]: n[3] for n in nodes} == {0: 100, 1: 250}


def test_marker_line_gives_the_commands_own_time() -> None:
    rec = RunRecord(run_id="r", seq=0, workload="w", rep=0, params={}, status="ok", blade="cb0",
                    command="c", started=0, finished=0)
    t0 = _parse_mark("@@ddc rc=0 start=100.25 end=103.75\n", rec)
    assert t0 == 100.25
    assert rec.workload_s == 3.5


def test_domstats_keeps_numbers_only() -> None:
    flat = collect.flat_domstats({"cpu.time": 12, "state.state": 1, "net.0.name": "vnet0", "x": True,
                                  "balloon.current": 1048576})
    assert flat == {"cpu.time": 12.0, "state.state": 1.0, "balloon.current": 1048576.0}


def test_step_spans() -> None:
    out = "started\n@@ddc setup 100.5 102.75\nnuma_hit 3\n"
    assert _span(out, "setup") == 2.25
    assert _span(out, "teardown") is None
