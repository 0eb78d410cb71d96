"""The latency plugin inside a real blade: attribution, cache model, latency, bandwidth.

One blade (2 vCPUs, 1G local, 1G on mb0) is booted once for the module. Counts
are read from the plugin's control socket around one command in the guest
(`reset`, run, `stats`), so each test sees exactly its own accesses plus the
guest's background noise.
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Iterator
from typing import Any

import pytest

from orchestrator import guest, plugin, state
from orchestrator.testbed import endpoint
from tests.vm.conftest import booted

pytestmark = pytest.mark.vm

NAME = "t-plug"
LOCAL_NS = 100
RACK = {
    "name": NAME, "accel": "tcg", "mode": "inject", "local_latency_ns": LOCAL_NS,
    "memory_blades": [{"name": "mb0", "size": "1G", "latency_ns": 500}],
    "compute_blades": [{"name": "cb0", "vcpus": 2, "memory": "1G", "remote": [{"blade": "mb0", "size": "1G"}]}],
}


class Blade:
    def __init__(self, st: state.TestbedState) -> None:
        self.st = st
        self.conn = guest.connect(endpoint(st, "cb0"))
        self.ctl = plugin.Control(st.plugin_socket("cb0"))

    def sh(self, command: str, timeout: float = 600) -> str:
        return guest.run(self.conn, command, timeout=timeout, blade="cb0").stdout

    def counted(self, command: str) -> tuple[str, dict[str, Any]]:
        """Run ``command`` in the guest; return its output and the plugin's counts for it."""
        self.ctl.request("reset")
        out = self.sh(command)
        return out, self.ctl.stats()

    def link(self, **fields: Any) -> None:
        self.ctl.request("set_link", blade="mb0", **fields)


@pytest.fixture(scope="module")
def blade(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Blade]:
    with booted(tmp_path_factory.mktemp("plug"), RACK) as st:
        b = Blade(st)
        try:
            yield b
        finally:
            b.ctl.close()
            b.conn.close()


def memory_by_node(stats: dict[str, Any]) -> dict[int, int]:
    return {n["node"]: n["memory"] for n in stats["total"]["nodes"]}


@pytest.mark.parametrize("bind,low,high", [(1, 0.95, 1.0), (0, 0.0, 0.05)])
def test_llc_misses_are_attributed_to_the_bound_node(blade: Blade, bind: int, low: float, high: float) -> None:
    blade.ctl.request("set_mode", mode="account")  # counts do not depend on the mode; this is faster
    try:
        _, stats = blade.counted(f"numactl --membind={bind} ddc-ptrchase -s 256M -n 1000000 -r 1")
    finally:
        blade.ctl.request("set_mode", mode="inject")
    mem = memory_by_node(stats)
    share = mem[1] / (mem[0] + mem[1])
    assert mem[0] + mem[1] > 1_000_000  # the chase itself misses the LLC on every load
    assert low <= share <= high, mem
    # The addresses came from the plugin's memo of host page -> physical
    # (QEMU's layout recognised), and its periodic checks against the API
    # found no stale entry.
    config = blade.ctl.request("config")
    assert config["hw_memo"] is True and config["hw_mismatches"] == 0, config


def steady_stats(blade: Blade, command: str, seconds: float = 2.0) -> dict[str, Any]:
    """Counts over ``seconds`` of a long-running probe's steady state, after its
    start-up and set-up (which page in, zero, and maybe compact memory)."""
    blade.sh(f"rm -f /tmp/probe.out; nohup {command} > /tmp/probe.out 2>&1 & echo $! > /tmp/probe.pid")
    try:
        deadline = time.monotonic() + 120
        while "round=2 " not in (out := blade.sh("cat /tmp/probe.out; kill -0 $(cat /tmp/probe.pid) || echo EXITED")):
            assert "EXITED" not in out and time.monotonic() < deadline, out
            time.sleep(0.5)
        blade.ctl.request("reset")
        time.sleep(seconds)
        stats = blade.ctl.stats()
    finally:
        blade.sh("kill $(cat /tmp/probe.pid) 2>/dev/null; true")
    return stats


def miss_ratio(blade: Blade, level: str, size: int) -> float:
    stats = steady_stats(blade, f"numactl --membind=0 ddc-ptrchase -p seq -s {size} -n 200000 -r 1000")
    counts = stats["total"]["levels"][level]
    assert counts["hits"] + counts["misses"] > 100_000, counts  # the sweep went through this level
    return counts["misses"] / (counts["hits"] + counts["misses"])


@pytest.mark.parametrize("level,capacity", [("l1d", 32 << 10), ("l2", 1 << 20), ("llc", 16 << 20)])
def test_miss_ratio_steps_at_each_level_capacity(blade: Blade, level: str, capacity: int) -> None:
    # A sequential sweep: an LRU level holds it entirely below its capacity and
    # misses on every line above it. The plugin counts the level's own accesses
    # (what missed the levels above), so the ratio is the level's own.
    blade.ctl.request("set_mode", mode="account")
    try:
        below = miss_ratio(blade, level, int(capacity / 1.25) // 4096 * 4096)
        above = miss_ratio(blade, level, int(capacity * 1.25) // 4096 * 4096)
    finally:
        blade.ctl.request("set_mode", mode="inject")
    assert below < 0.1, (below, above)
    assert above > 0.9, (below, above)


def test_latency_changes_at_runtime_and_is_charged_exactly(blade: Blade) -> None:
    # Account mode: the charge per remote miss is exact and visible in the counters,
    # whatever the host's timing noise. Two latencies, one boot.
    blade.ctl.request("set_mode", mode="account")
    try:
        for added in (250, 700):
            blade.link(latency_ns=LOCAL_NS + added, bandwidth_gbps=0)
            _, stats = blade.counted("numactl --membind=1 ddc-ptrchase -s 64M -n 300000 -r 1")
            (mb0,) = stats["blades"]
            assert mb0["latency_ns"] == LOCAL_NS + added
            assert mb0["accesses"] > 300_000
            assert mb0["stall_ns"] == added * mb0["accesses"]
            assert stats["total"]["modelled_stall_ns"] == mb0["stall_ns"]
    finally:
        blade.ctl.request("set_mode", mode="inject")
        blade.link(latency_ns=500, bandwidth_gbps=0)


# Inject mode is approximate: the plugin charges exactly latency - local per
# remote miss (its counters say so: injected == modelled, one charge per chase
# load), yet the guest measures 10-30 % more, more on a busier host: the vCPU
# executes the same instructions more slowly between stalls
# (bench/RESULTS.md, 2026-12-02). Paced mode is exact (tests/vm/test_paced.py,
# strict); this stays as an expected failure, so a fix of inject shows as XPASS.
LATENCY_GAP = ("inject mode: the guest-measured stall exceeds the charged one by 10-30 %, more on a busier "
               "host (bench/RESULTS.md; paced mode is the exact one)")


def paired_diff_ns(blade: Blade) -> float:
    """Node 1 minus node 0, ns per dependent load: both buffers in one process,
    chased in alternating rounds, so both see the same host noise."""
    out = blade.sh("ddc-ptrchase -s 64M -n 50000 -r 21 -N 0,1")
    m = re.search(r"diff_ns_median=([-\d.]+)", out)
    assert m, out
    return float(m.group(1))


def test_paired_probe_sees_no_difference_without_added_latency(blade: Blade) -> None:
    # The reference for the test below: same latency on both nodes, so the
    # paired difference is TCG's own (no cost for a remote range by itself).
    # Usually within 12 ns here, but one CI run on a loaded host saw 43 and
    # another 64 (both nodes are shared memory on 4 KiB host pages), so the
    # median of 3 within 50 ns.
    blade.link(latency_ns=LOCAL_NS, bandwidth_gbps=0)
    try:
        assert abs(statistics.median(paired_diff_ns(blade) for _ in range(3))) <= 50
    finally:
        blade.link(latency_ns=500, bandwidth_gbps=0)


@pytest.mark.xfail(reason=LATENCY_GAP, strict=False)
@pytest.mark.parametrize("added,tolerance", [(400, 0.05), (900, 0.05), (150, 0.10)])
def test_injected_latency_per_dependent_load(blade: Blade, added: int, tolerance: float) -> None:
    # Changed at runtime: the blade is not rebooted between the parameters.
    blade.link(latency_ns=LOCAL_NS + added, bandwidth_gbps=0)
    measured = statistics.median(paired_diff_ns(blade) for _ in range(3))
    assert abs(measured - added) <= tolerance * added, measured


STREAM = "numactl --membind=1 ddc-stream -t 2 -s 256M -d {seconds} -m lines"


def stream_gbps(out: str) -> float:
    m = re.search(r"^threads=2 .* gbps=([\d.]+)$", out, re.M)
    assert m, out
    return float(m.group(1))


def test_bandwidth_cap(blade: Blade) -> None:
    # No added latency, so only the link limits the stream, shared by both
    # vCPUs. `-m lines` reads one word per line: the link carries lines. The
    # cap is 1 GB/s where the guest streams at least twice that unlimited
    # (2.6-4 GB/s on the machines this was written on); a slower host (1.2-2
    # GB/s on some) gets half its own unlimited rate instead, so the test
    # judges the link and not the host's speed.
    #
    # The cap is never exceeded, on every try. Reaching it needs the host to
    # keep its speed for the try: on a busy 2-core host the same unlimited
    # stream measured 0.7 GB/s in one 4-s run and 1.4 in the next, so a try
    # that falls short is tried again, 3 times at most. A try counts only if
    # the link held the stream back (the plugin charged it queueing): one
    # where the host itself slowed to the cap proves nothing either way.
    tries = []
    try:
        for _ in range(3):
            blade.link(latency_ns=LOCAL_NS, bandwidth_gbps=0)
            unlimited = stream_gbps(blade.sh(STREAM.format(seconds=2)))
            cap = min(1.0, round(unlimited / 2, 2))
            blade.link(latency_ns=LOCAL_NS, bandwidth_gbps=cap)
            out, stats = blade.counted(STREAM.format(seconds=4))
            measured = stream_gbps(out)
            queue_s = sum(b["queue_ns"] for b in stats["blades"]) / 1e9
            tries.append(f"cap {cap} GB/s (unlimited {unlimited}): {measured} GB/s, "
                         f"link queueing {queue_s:.2f} s\n{out}")
            assert measured <= 1.10 * cap, tries[-1]
            if measured >= 0.90 * cap and queue_s > 0.1:
                return
    finally:
        blade.link(latency_ns=500, bandwidth_gbps=0)
    pytest.fail("the stream never reached the cap within 10 % while held back by the link:\n" + "\n".join(tries))
