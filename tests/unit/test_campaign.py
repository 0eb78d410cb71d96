"""Campaign files: validation (a corpus of bad files), matrix expansion, run ids."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.campaign import check_placement, load_campaign, numactl, run_id
from orchestrator.errors import SpecError
from tests.conftest import DATA, EXAMPLES

BAD = sorted((DATA / "bad-campaigns").glob("*.yaml"))


def expected(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name} lacks its '# expect:' line"
    return first.removeprefix("# expect: ")


def test_corpus_is_large_enough() -> None:
    assert len(BAD) >= 15


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_campaign_is_refused_with_its_key(path: Path, ddc_home: Path) -> None:
    with pytest.raises(SpecError) as err:
        load_campaign(path)
    message = str(err.value)
    assert message.startswith(str(path)), message
    assert expected(path) in message, message
    assert not (ddc_home / "home").exists(), "validation must create nothing"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(f"testbed: {EXAMPLES / 'rack.yaml'}\n" + text)
    return path


def test_smoke_campaign_expands() -> None:
    plan = load_campaign(EXAMPLES / "smoke-campaign.yaml")
    assert plan.blade == "cb0"
    assert len(plan.runs) >= 6
    assert {r.workload for r in plan.runs} >= {"ddc-ptrchase", "sysbench-memory"}
    chase = [r for r in plan.runs if r.workload == "ddc-ptrchase"]
    assert {(r.placement, r.params["mb0.latency_ns"]) for r in chase} == {
        ("membind=0", 250), ("membind=0", 600), ("membind=1", 250), ("membind=1", 600)}
    assert all(r.params["size"] == "64M" for r in chase), "fixed params override the workload's defaults"
    assert len({r.run_id for r in plan.runs}) == len(plan.runs)
    assert len(chase) == 3 * 4, "the probe has repetitions of its own"


def test_a_workload_with_its_own_repetitions(tmp_path: Path) -> None:
    plan = load_campaign(write(tmp_path, """name: c
repetitions: 2
workloads:
  - ddc-stream
  - {name: ddc-ptrchase, repetitions: 4}
  - {name: sysbench-memory, repetitions: 1}
matrix:
  placement: [membind=0, membind=1]
"""))
    reps = [(r.workload, r.rep) for r in plan.runs]
    assert len(reps) == 2 * 2 + 4 * 2 + 1 * 2
    assert {w: sum(1 for x, _ in reps if x == w) for w, _ in reps} == {
        "ddc-stream": 4, "ddc-ptrchase": 8, "sysbench-memory": 2}
    # still repetitions outermost: each round holds every workload that has one left
    assert [w for w, rep in reps if rep == 1] == ["ddc-stream"] * 2 + ["ddc-ptrchase"] * 2
    assert [w for w, rep in reps if rep >= 2] == ["ddc-ptrchase"] * 4
    assert [r.seq for r in plan.runs] == list(range(len(reps)))


def test_matrix_repetitions_and_warmups(tmp_path: Path) -> None:
    plan = load_campaign(write(tmp_path, """name: c
repetitions: 3
warmup: 1
workloads:
  - ddc-stream
  - {name: ddc-ptrchase, matrix: {size: [16M, 32M]}}
matrix:
  placement: [default, interleave, preferred=1]
"""))
    # (3 placements + 3 x 2 sizes) x 3 repetitions
    assert len(plan.runs) == (3 + 6) * 3
    assert [r.seq for r in plan.runs] == list(range(27))
    assert [r.rep for r in plan.runs[:9]] == [0] * 9, "repetitions are the outermost loop"
    assert plan.runs[9].rep == 1
    assert [w.workload for w in plan.warmups] == ["ddc-stream", "ddc-ptrchase"]
    # every run carries the testbed's link latency and the workload's defaults
    stream = plan.runs[0]
    assert stream.params["mb0.latency_ns"] == 250
    assert stream.params["mb0.bandwidth_gbps"] == 16
    assert "threads" in stream.params


def test_run_ids_are_stable_and_distinct(tmp_path: Path) -> None:
    text = "name: c\nrepetitions: 2\nworkloads: [ddc-stream]\nmatrix: {mb0.latency_ns: [300, 400]}\n"
    first = [r.run_id for r in load_campaign(write(tmp_path, text)).runs]
    again = [r.run_id for r in load_campaign(write(tmp_path, text)).runs]
    assert first == again
    assert len(set(first)) == 4
    assert run_id("w", {"a": 1, "b": 2}, 0) == run_id("w", {"b": 2, "a": 1}, 0)
    assert run_id("w", {"a": 1}, 0) != run_id("w", {"a": 1}, 1)


def test_links_and_knobs_of_a_run(tmp_path: Path) -> None:
    plan = load_campaign(write(tmp_path, """name: c
workloads: [ddc-stream]
matrix:
  mb0.latency_ns: [900]
  mb0.bandwidth_gbps: [1]
  numa_balancing: [1]
  demotion_enabled: [true]
"""))
    run = plan.runs[0]
    assert run.links() == {"mb0": {"latency_ns": 900, "bandwidth_gbps": 1}}
    assert run.knobs() == {"numa_balancing": 1, "demotion_enabled": True}


@pytest.mark.parametrize("placement,prefix", [("default", ""), ("membind=1", "numactl --membind=1"),
                                              ("preferred=0", "numactl --preferred=0"),
                                              ("interleave", "numactl --interleave=all"),
                                              ("interleave=0,1", "numactl --interleave=0,1")])
def test_numactl_prefix(placement: str, prefix: str) -> None:
    assert numactl(placement) == prefix


@pytest.mark.parametrize("bad", ["membind", "bind=1", "preferred=0,1", "membind=a", "", 3])
def test_bad_placements(bad: object) -> None:
    with pytest.raises(ValueError):
        check_placement(bad)
