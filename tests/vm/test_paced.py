"""Paced mode in a real blade: what the guest measures, converted to model time,
is the model's time, whatever else the host is doing.

One blade (2 vCPUs, 1G local, 1G on mb0) in paced mode with `dilation: auto`,
booted once for the module. Its caches are small (1M LLC) so that a 32M
chase misses them on nearly every load, as the model says it should, and the
probes run pinned to vCPU 1, which the blade boots tickless (nohz_full).
"""

from __future__ import annotations

import re
import statistics
import subprocess
from collections.abc import Iterator
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
SYSBENCH = ("numactl --membind={node} sysbench memory --threads={threads} --memory-scope=local "
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


@pytest.fixture(scope="module")
def blade(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Blade]:
    path: Path = tmp_path_factory.mktemp("paced") / f"{NAME}.yaml"
    path.write_text(yaml.safe_dump(RACK))
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
    """sysbench's MiB/s in model time (the guest's rate times k)."""
    out, clocks = blade.counted(SYSBENCH.format(**params))
    m = re.search(r"MiB transferred \(([\d.]+) MiB/sec\)", out)
    assert m, out
    return float(m.group(1)) * blade.k, clocks


def chase_insns_per_load(blade: Blade) -> float:
    """Instructions per step of the chase loop, from the plugin's count on the
    probe's vCPU: two runs that differ only in their number of loads (each
    chases a quarter more in its untimed warm-up lap)."""
    insns = []
    for loads in (20_000, 1_020_000):
        blade.counted(f"taskset -c 1 ddc-ptrchase -s 1M -n {loads} -r 1")
        insns.append(next(v["insns"] for v in blade.ctl.stats()["vcpus"] if v["vcpu"] == 1))
    return (insns[1] - insns[0]) / (1_000_000 * 5 / 4)


@pytest.fixture
def hog() -> Iterator[None]:
    """A busy loop on the host, pinned to one of its cores, for the test's duration."""
    proc = subprocess.Popen(["taskset", "-c", "1", "sh", "-c", "while :; do :; done"])
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


def test_dilation_was_measured_and_applied(blade: Blade) -> None:
    stats = blade.ctl.stats()
    assert stats["mode"] == "paced"
    assert stats["dilation"] == blade.k and blade.k in pacing.LADDER and blade.k >= 2
    assert stats["cpi_ns"] == CPI_NS


@pytest.mark.parametrize("added", [150, 400, 900])
def test_remote_latency_is_exact_in_model_time(blade: Blade, added: int) -> None:
    blade.link(LOCAL_NS + added)
    p = probe(blade)
    assert abs(p.diff_ns - added) <= 0.03 * added, p
    assert p.clocks.lag_fraction < 0.01, p.clocks


def test_local_load_costs_what_the_model_charges(blade: Blade) -> None:
    per_load = chase_insns_per_load(blade)
    assert 3.5 < per_load < 6.5, per_load  # the chase loop: a handful of instructions
    expected = per_load * CPI_NS + LOCAL_NS
    blade.link(LOCAL_NS + 400)
    p = probe(blade)
    assert abs(p.node0_ns - expected) <= 0.05 * expected, (p, expected)


def test_parallel_vcpus_are_paced_independently(blade: Blade) -> None:
    one, c1 = sysbench_mib_s(blade, node=0, threads=1, block="64K", total="256M")
    two, c2 = sysbench_mib_s(blade, node=0, threads=2, block="64K", total="512M")
    assert two >= 1.8 * one, (one, two)
    assert max(c1.lag_fraction, c2.lag_fraction) < 0.01, (c1, c2)


@dataclass
class HostIndependent:
    probe_ns: list[float]
    sysbench: list[float]
    lag: list[float]


RESULTS = HostIndependent([], [], [])


def _measure_twice(blade: Blade) -> None:
    blade.link(LOCAL_NS + 400)
    p = probe(blade)
    mib, clocks = sysbench_mib_s(blade, node=1, threads=2, block="4M", total="64M")
    RESULTS.probe_ns.append(p.diff_ns)
    RESULTS.sysbench.append(mib)
    RESULTS.lag.extend([p.clocks.lag_fraction, clocks.lag_fraction])


def test_results_alone(blade: Blade) -> None:
    _measure_twice(blade)


def test_results_next_to_a_cpu_hog_match_those_alone(blade: Blade, hog: None) -> None:
    if not RESULTS.probe_ns:
        pytest.skip("needs test_results_alone first")
    _measure_twice(blade)
    (alone_probe, hog_probe), (alone_mib, hog_mib) = RESULTS.probe_ns, RESULTS.sysbench
    assert abs(hog_probe - alone_probe) <= 0.02 * alone_probe, RESULTS
    assert abs(hog_mib - alone_mib) <= 0.02 * alone_mib, RESULTS
    assert max(RESULTS.lag) < 0.01, RESULTS
    assert statistics.mean(RESULTS.probe_ns) > 0
