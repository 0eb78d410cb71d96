"""Campaigns on a real testbed: the smoke campaign end to end, resume after
kill -9, a run past its timeout, a blade that dies in the middle of a run.

One one-blade testbed serves the whole module; the first campaign brings it up
itself (as `ddc run` does for a user), and it is torn down and checked clean at
the end.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator import state
from orchestrator.campaign import load_campaign
from orchestrator.hypervisor import Hypervisor
from tests.conftest import DATA, EXAMPLES
from tests.vm.conftest import ddc, leftovers, make_rack

pytestmark = pytest.mark.vm

NAME = "ddccamp"
EXTRA = {"DDC_WORKLOADS": str(DATA / "workloads-extra")}


@pytest.fixture(scope="module")
def rack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    tmp = tmp_path_factory.mktemp("campaign")
    data = yaml.safe_load((EXAMPLES / "rack.yaml").read_text())
    path = make_rack(tmp, NAME, compute_blades=data["compute_blades"][:1])
    yield path
    ddc("down", str(path), check=False)
    assert leftovers(NAME) == [], f"`ddc down` left {leftovers(NAME)}"


def campaign(rack: Path, tmp: Path, name: str, **fields: object) -> Path:
    data = {"name": name, "testbed": str(rack), **fields}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def rows(out: Path, sql: str, *args: object) -> list[tuple]:
    db = sqlite3.connect(f"file:{out / 'results.sqlite'}?mode=ro", uri=True)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def stored_runs(out: Path) -> int:
    """Runs in the store so far: 0 while `ddc run` has not created it. The store
    appears with its tables (made aside, then linked into place), so once the file
    exists the count can be read; fewer runs than wanted is just not there yet."""
    if not (out / "results.sqlite").exists():
        return 0
    return int(rows(out, "SELECT count(*) FROM runs")[0][0])


def wait_for_runs(proc: subprocess.Popen[Any], out: Path, count: int, timeout: float = 300) -> None:
    """Wait until ``count`` runs are stored; fail at once, with the reason, if `ddc run` exits first."""
    deadline = time.monotonic() + timeout
    while stored_runs(out) < count:
        if proc.poll() is not None:
            output = proc.stdout.read() if proc.stdout else ""
            pytest.fail(f"`ddc run` exited ({proc.returncode}) with {stored_runs(out)} of {count} runs stored\n"
                        f"{output}")
        if time.monotonic() > deadline:
            pytest.fail(f"{stored_runs(out)} of {count} runs stored after {timeout:g} s")
        time.sleep(0.2)


def grouped(out: Path, key: Callable[[dict[str, Any]], Any], sql: str) -> dict[Any, list[Any]]:
    """Rows of (run params, value), their values grouped by ``key(params)``, in row order."""
    groups: dict[Any, list[Any]] = {}
    for params, value in rows(out, sql):
        groups.setdefault(key(json.loads(params)), []).append(value)
    return groups


def guest(rack: Path, command: str) -> str:
    return ddc("ssh", str(rack), "cb0", "--", "sh", "-c", command, check=False).stdout


def test_smoke_campaign(rack: Path, tmp_path: Path) -> None:
    smoke = yaml.safe_load((EXAMPLES / "smoke-campaign.yaml").read_text())
    smoke["testbed"] = str(rack)
    file = tmp_path / "smoke.yaml"
    file.write_text(yaml.safe_dump(smoke, sort_keys=False))
    out = tmp_path / "out"
    plan = load_campaign(file)

    dry = ddc("run", str(file), "--dry-run", "--out", str(out))
    assert dry.stdout.strip().splitlines()[-1] == f"{len(plan.runs)} runs"
    assert state.load(NAME) is None, "--dry-run starts nothing"

    started = time.monotonic()
    proc = ddc("run", str(file), "--out", str(out), timeout=900)
    took = time.monotonic() - started
    assert f"{len(plan.runs)} runs executed ({len(plan.runs)} ok)" in proc.stdout, proc.stdout + proc.stderr
    assert took < 300 + 60, f"the smoke campaign took {took:.0f} s (target: under 5 minutes, testbed up included)"

    runs = rows(out, "SELECT run_id, workload, params, status, workload_s FROM runs")
    assert sorted(r[0] for r in runs) == sorted(r.run_id for r in plan.runs)
    assert all(r[3] == "ok" and r[4] > 0 for r in runs)

    # The probe sees remote memory, and its latency follows the runtime setting.
    def setting(p: dict[str, Any]) -> tuple[str, int]:
        return p["placement"], p["mb0.latency_ns"]

    chase = grouped(out, setting, "SELECT r.params, m.value FROM runs r JOIN metrics m USING (run_id) "
                                  "WHERE r.workload = 'ddc-ptrchase' AND m.name = 'ns_per_load'")
    assert sorted(len(v) for v in chase.values()) == [3] * 4, chase
    # In the guest's own clock, only gaps of 350 ns and more, and on the median
    # of 3 runs: one run against another varies by hundreds of ns on a busy host
    # (in one CI run node 1 at +150 ns took 1379 ns a load, node 0 599; in
    # another node 0 took 925). The paired probe in test_plugin_guest measures
    # small differences.
    ns = {key: statistics.median(values) for key, values in chase.items()}
    assert ns[("membind=1", 600)] > ns[("membind=1", 250)] + 200, chase
    assert max(ns[("membind=0", 250)], ns[("membind=0", 600)]) < ns[("membind=1", 600)], chase
    # Exactly, in the plugin's terms, in every run: node 1's chase is charged its
    # added latency for most of its loads, node 0's is charged (almost) nothing.
    injected = grouped(out, setting, "SELECT r.params, json_extract(h.stats, '$.total.injected_ns') "
                                     "FROM runs r JOIN hierarchy h USING (run_id) "
                                     "WHERE r.workload = 'ddc-ptrchase' ORDER BY r.rep")
    assert sorted(len(v) for v in injected.values()) == [3] * 4, injected
    for latency in (250, 600):
        for node0, node1 in zip(injected[("membind=0", latency)], injected[("membind=1", latency)], strict=True):
            # 5 rounds of 200000 loads over 64 MiB, most missing the LLC, at latency - 100 ns each
            assert node1 > 0.5 * 5 * 200_000 * (latency - 100), injected
            assert node0 < node1 / 100, injected

    def placement(p: dict[str, Any]) -> str:
        return p["placement"]

    # Guest counters: every membind=1 run allocated on node 1, no membind=0 run did (much).
    hits = grouped(out, placement, "SELECT r.params, c.delta FROM runs r JOIN counters c USING (run_id) "
                                   "WHERE r.workload = 'ddc-ptrchase' AND c.source = 'numastat' AND c.node = 1 "
                                   "AND c.name = 'numa_hit'")
    assert min(hits["membind=1"]) > 10 * max(max(hits["membind=0"]), 1), hits
    # Hierarchy statistics for exactly the run: a remote-bound chase reaches node 1.
    memory = grouped(out, placement, "SELECT r.params, n.memory FROM runs r JOIN nodes n USING (run_id) "
                                     "WHERE r.workload = 'ddc-ptrchase' AND n.node = 1")
    assert sorted(len(v) for v in memory.values()) == [6, 6], memory
    assert min(memory["membind=1"]) > 100 * max(max(memory["membind=0"]), 1), memory
    assert rows(out, "SELECT count(*) FROM levels")[0][0] == 3 * len(plan.runs)
    assert rows(out, "SELECT count(*) FROM counters WHERE source = 'domstats' AND name = 'cpu.time' "
                     "AND delta > 0")[0][0] == len(plan.runs)
    # 1-second series from both sides
    sources = {s for (s,) in rows(out, "SELECT DISTINCT source FROM samples")}
    assert sources == {"plugin", "guest"}

    again = ddc("run", str(file), "--out", str(out))
    assert "0 runs executed" in again.stdout and f"{len(plan.runs)} already done" in again.stdout

    table = tmp_path / "runs.csv"
    ddc("results", str(out), "--csv", str(table))
    with table.open() as f:
        data = list(csv.DictReader(f))
    assert len(data) == len(plan.runs)
    assert {"run_id", "status", "placement", "mb0.latency_ns", "ns_per_load"} <= set(data[0])


def test_resume_after_kill_9(rack: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DDC_WORKLOADS", EXTRA["DDC_WORKLOADS"])
    file = campaign(rack, tmp_path, "resume", workloads=["sleep"], matrix={"seconds": [2, 2.1, 2.2, 2.3, 2.4, 2.5]})
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "run", str(file), "--out", str(out)],
                            env={**os.environ, **EXTRA}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_runs(proc, out, 2)
        time.sleep(1.0)  # in the middle of the third run
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed_at = time.time()
    before = dict(rows(out, "SELECT run_id, started FROM runs"))
    assert 2 <= len(before) < 6

    ddc("run", str(file), "--out", str(out), env=EXTRA, timeout=600)
    after = dict(rows(out, "SELECT run_id, started FROM runs"))
    assert sorted(after) == sorted(r.run_id for r in load_campaign(file).runs)
    assert all(after[k] == v for k, v in before.items()), "completed runs are not repeated"
    assert sum(1 for v in after.values() if v > killed_at) == 6 - len(before), "the rest ran after the kill"
    assert {s for (s,) in rows(out, "SELECT status FROM runs")} == {"ok"}
    assert "ddc-test-daemon" not in guest(rack, "ps -eo comm")


def test_timeout_and_dead_blade(rack: Path, tmp_path: Path) -> None:
    file = campaign(rack, tmp_path, "faults", workloads=["sleep"], timeout=6,
                    matrix={"seconds": [1, 40, 25, 2]})
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "run", str(file), "--out", str(out)],
                            env={**os.environ, **EXTRA}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_runs(proc, out, 2)
        time.sleep(3.0)  # the third run (25 s) is running: kill its blade's QEMU
        st = state.load(NAME)
        assert st is not None
        with Hypervisor(st.uri) as hv:
            pid = hv.qemu_pid(st.blades["cb0"].domain)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        output, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    status = {yaml.safe_load(p)["seconds"]: (s, e) for p, s, e in rows(out, "SELECT params, status, error FROM runs")}
    assert sorted(status) == [1, 2, 25, 40], output
    assert status[1][0] == "ok", output
    assert status[40][0] == "timeout", status
    assert status[25][0] == "failed" and "died" in status[25][1], status
    assert status[2][0] == "ok", "the blade came back and the campaign went on"
    assert proc.returncode == 3, output  # not every run was ok
    assert "ddc-test-daemon" not in guest(rack, "ps -eo comm")


def test_kernel_knobs_are_set_per_run(rack: Path, tmp_path: Path) -> None:
    file = campaign(rack, tmp_path, "knobs", workloads=["knobs"],
                    matrix={"numa_balancing": [1, 0], "demotion_enabled": [True, False]})
    out = tmp_path / "out"
    ddc("run", str(file), "--out", str(out), env=EXTRA)
    seen = {(json_params["numa_balancing"], json_params["demotion_enabled"]): (nb, de)
            for json_params, nb, de in (
                (yaml.safe_load(p), nb, de) for p, nb, de in rows(
                    out, "SELECT r.params, a.value, b.value FROM runs r "
                         "JOIN metrics a ON a.run_id = r.run_id AND a.name = 'numa_balancing' "
                         "JOIN metrics b ON b.run_id = r.run_id AND b.name = 'demotion_enabled'"))}
    assert seen == {(1, True): (1, 1), (1, False): (1, 0), (0, True): (0, 1), (0, False): (0, 0)}
