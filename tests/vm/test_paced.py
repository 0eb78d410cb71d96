"""Paced mode in a real blade: what the guest measures, converted to model time,
is the model's time, whatever else the host is doing.

Two blades (2 vCPUs, 1G local, 1G on mb0) in paced mode with `dilation: auto`,
one after the other. Their caches are small (1M LLC) so that a 32M chase
misses them on nearly every load, as the model says it should. The first
boots with nohz_full=1 and runs the probes pinned to that tickless vCPU: the
guest's timer tick runs on wall time, k times as often in model time, and
would add its cost to every load. The second keeps the tick everywhere, for
sysbench's unpinned threads: with nohz_full, Linux balances load only from
CPU 0, and two threads could share it while CPU 1 idles.
"""

from __future__ import annotations

import re
import statistics
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator import guest, pacing, plugin, state
from orchestrator.testbed import endpoint
from tests.vm.conftest import ddc, leftovers

pytestmark = pytest.mark.vm

NAME = "t-paced"
LOCAL_NS = 100
CPI_NS = 0.4
RACK = {
    "name": NAME, "accel": "tcg", "mode": "paced", "dilation": "auto", "cpi_ns": CPI_NS,
    "local_latency_ns": LOCAL_NS,
    "caches": [{"name": "l1d", "size": "32K", "ways": 8, "hit_ns": 1},
               {"name": "l2", "size": "256K", "ways": 8, "hit_ns": 4},
               {"name": "llc", "size": "1M", "ways": 16, "scope": "shared", "hit_ns": 15}],
    "memory_blades": [{"name": "mb0", "size": "1G", "latency_ns": 500}],
    "compute_blades": [{"name": "cb0", "vcpus": 2, "memory": "1G", "remote": [{"blade": "mb0", "size": "1G"}]}],
}
PROBE = "taskset -c 1 ddc-ptrchase -s 32M -n 20000 -r 5 -N 0,1"
# --time=0: sysbench's default stops a run after 10 s of the guest's (wall) clock.
SYSBENCH = ("numactl --membind={node} sysbench memory --threads={threads} --memory-scope=local --time=0 "
            "--memory-block-size={block} --memory-total-size={total} run")


class Blade:
    def __init__(self, st: state.TestbedState) -> None:
        self.st = st
        self.k = st.dilation
        self.conn = guest.connect(endpoint(st, "cb0"))
        self.ctl = plugin.Control(st.plugin_socket("cb0"))

    def counted(self, command: str) -> tuple[str, pacing.Clocks]:
        """Run ``command`` in the guest; its output and the plugin's clocks for it."""
        self.ctl.request("reset")
        out = guest.run(self.conn, command, timeout=1800, blade="cb0").stdout
        return out, pacing.clocks(self.ctl.stats())

    def link(self, latency_ns: int) -> None:
        self.ctl.request("set_link", blade="mb0", latency_ns=latency_ns)


def booted(tmp_path_factory: pytest.TempPathFactory, **changes: Any) -> Iterator[Blade]:
    path: Path = tmp_path_factory.mktemp("paced") / f"{NAME}.yaml"
    path.write_text(yaml.safe_dump({**RACK, **changes}))
    ddc("down", str(path), check=False)
    b = None
    try:
        ddc("up", str(path), timeout=900)
        st = state.load(NAME)
        assert st is not None and st.mode == "paced"
        b = Blade(st)
        yield b
    finally:
        if b is not None:
            b.ctl.close()
            b.conn.close()
        ddc("down", str(path), check=False)
        assert leftovers(NAME) == [], f"`ddc down` left {leftovers(NAME)}"


@dataclass(frozen=True)
class Probe:
    node0_ns: float  # model ns per dependent load on node 0 (median of the rounds)
    diff_ns: float  # node 1 minus node 0, model ns (median of the paired rounds)
    clocks: pacing.Clocks


def probe(blade: Blade) -> Probe:
    out, clocks = blade.counted(PROBE)
    m = re.search(r"ns_per_load_median=([\d.]+) diff_ns_median=([-\d.]+)", out)
    assert m, out
    return Probe(float(m.group(1)) / blade.k, float(m.group(2)) / blade.k, clocks)


def sysbench_mib_s(blade: Blade, **params: Any) -> tuple[float, pacing.Clocks]:
    """MiB moved per second of model time: the total over the threads' mean
    execution time (divided by k). Neither sysbench's own MiB/sec, which also
    counts its threads' start-up, nor its total time, which ends with the
    slower thread's last block (one 4M block is 33 ms of model time, 2.7 % of
    a run), is steady to 2 % from one run to the next."""
    out, clocks = blade.counted(SYSBENCH.format(**params))
    moved = re.search(r"([\d.]+) MiB transferred", out)
    busy = re.search(r"execution time \(avg/stddev\):\s+([\d.]+)/", out)
    assert moved and busy, out
    return float(moved.group(1)) / (float(busy.group(1)) / blade.k), clocks


def chase_insns_per_load(blade: Blade) -> float:
    """Instructions per step of the chase loop, from the plugin's count on the
    probe's vCPU: two runs that differ only in their number of loads (each
    chases a quarter more in its untimed warm-up lap)."""
    insns = []
    for loads in (20_000, 4_020_000):  # a large difference: other work on the vCPU varies by ~1M instructions
        blade.counted(f"taskset -c 1 ddc-ptrchase -s 1M -n {loads} -r 1")
        insns.append(next(v["insns"] for v in blade.ctl.stats()["vcpus"] if v["vcpu"] == 1))
    return (insns[1] - insns[0]) / (4_000_000 * 5 / 4)


@contextmanager
def hog() -> Iterator[None]:
    """A busy loop on the host, pinned to one of its cores, for the test's duration."""
    proc = subprocess.Popen(["taskset", "-c", "1", "sh", "-c", "while :; do :; done"])
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="class")
def tickless(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Blade]:
    yield from booted(tmp_path_factory, kernel_args=["nohz_full=1"])


@pytest.fixture(scope="class")
def ticking(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Blade]:
    yield from booted(tmp_path_factory)


@pytest.mark.usefixtures("tickless")
class TestTickless:
    """The paired probe, pinned to vCPU 1, which boots tickless."""

    @pytest.fixture
    def blade(self, tickless: Blade) -> Blade:
        return tickless

    def test_dilation_was_measured_and_applied(self, blade: Blade) -> None:
        stats = blade.ctl.stats()
        assert stats["mode"] == "paced"
        assert stats["dilation"] == blade.k and blade.k in pacing.LADDER and blade.k >= 2
        assert stats["cpi_ns"] == CPI_NS

    @pytest.mark.parametrize("added", [150, 400, 900])
    def test_remote_latency_is_exact_in_model_time(self, blade: Blade, added: int) -> None:
        blade.link(LOCAL_NS + added)
        p = probe(blade)
        assert abs(p.diff_ns - added) <= 0.03 * added, p
        assert p.clocks.lag_fraction < 0.01, p.clocks

    def test_local_load_costs_what_the_model_charges(self, blade: Blade) -> None:
        per_load = chase_insns_per_load(blade)
        assert 3.5 < per_load < 6.5, per_load  # the chase loop: a handful of instructions
        expected = per_load * CPI_NS + LOCAL_NS
        blade.link(LOCAL_NS + 400)
        p = probe(blade)
        assert abs(p.node0_ns - expected) <= 0.05 * expected, (p, expected)

    def test_the_probe_next_to_a_cpu_hog_matches_the_probe_alone(self, blade: Blade) -> None:
        blade.link(LOCAL_NS + 400)
        alone = probe(blade)
        with hog():
            busy = probe(blade)
        assert abs(busy.diff_ns - alone.diff_ns) <= 0.02 * alone.diff_ns, (alone, busy)
        assert abs(busy.node0_ns - alone.node0_ns) <= 0.02 * alone.node0_ns, (alone, busy)
        assert max(alone.clocks.lag_fraction, busy.clocks.lag_fraction) < 0.01, (alone, busy)


@pytest.mark.usefixtures("ticking")
class TestTicking:
    """sysbench's threads, placed by the guest's scheduler."""

    @pytest.fixture
    def blade(self, ticking: Blade) -> Blade:
        return ticking

    def test_parallel_vcpus_are_paced_independently(self, blade: Blade) -> None:
        one, c1 = sysbench_mib_s(blade, node=0, threads=1, block="64K", total="256M")
        two, c2 = sysbench_mib_s(blade, node=0, threads=2, block="64K", total="512M")
        assert two >= 1.8 * one, (one, two)
        assert max(c1.lag_fraction, c2.lag_fraction) < 0.01, (c1, c2)

    def test_sysbench_next_to_a_cpu_hog_matches_sysbench_alone(self, blade: Blade) -> None:
        # Alternating, 3 of each, medians: one run differs from the next by
        # up to 1.5 % alone (which vCPU also serves the guest's housekeeping).
        blade.link(LOCAL_NS + 400)
        runs: dict[bool, list[tuple[float, pacing.Clocks]]] = {False: [], True: []}
        for _ in range(3):
            for busy in (False, True):
                with hog() if busy else nullcontext():
                    runs[busy].append(sysbench_mib_s(blade, node=1, threads=2, block="4M", total="256M"))
        alone, busy = (statistics.median(m for m, _ in runs[b]) for b in (False, True))
        assert abs(busy - alone) <= 0.02 * alone, runs
        assert max(c.lag_fraction for rs in runs.values() for _, c in rs) < 0.01, runs
