"""Probes of a paced blade, shared by tests/vm/test_paced.py (which asserts)
and bench/paced.py (which prints): the blade, the paired pointer chase, sysbench
memory, and a CPU hog on the host. Every figure returned is model time."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from orchestrator import guest, pacing, plugin, state, testbed

LOCAL_NS = 100
CPI_NS = 0.4


def rack(name: str, **changes: Any) -> dict[str, Any]:
    """One compute blade (2 vCPUs, 1G local, 1G on mb0) in paced mode with a
    small hierarchy (1M LLC), so that a 32M chase misses it on nearly every load."""
    return {
        "name": name, "accel": "tcg", "mode": "paced", "dilation": "auto", "cpi_ns": CPI_NS,
        "local_latency_ns": LOCAL_NS,
        "caches": [{"name": "l1d", "size": "32K", "ways": 8, "hit_ns": 1},
                   {"name": "l2", "size": "256K", "ways": 8, "hit_ns": 4},
                   {"name": "llc", "size": "1M", "ways": 16, "scope": "shared", "hit_ns": 15}],
        "memory_blades": [{"name": "mb0", "size": "1G", "latency_ns": 500}],
        "compute_blades": [{"name": "cb0", "vcpus": 2, "memory": "1G",
                            "remote": [{"blade": "mb0", "size": "1G"}]}],
        **changes,
    }


PROBE = "taskset -c {cpu} ddc-ptrchase -s 32M -n 20000 -r 5 -N 0,1"
# --time=0: sysbench's default stops a run after 10 s of the guest's (wall) clock.
SYSBENCH = ("numactl --membind={node} sysbench memory --threads={threads} --memory-scope=local --time=0 "
            "--memory-block-size={block} --memory-total-size={total} run")


@contextmanager
def hog() -> Iterator[None]:
    """A busy loop on the host, pinned to one of its cores, for the block's duration."""
    proc = subprocess.Popen(["taskset", "-c", "1", "sh", "-c", "while :; do :; done"])
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


@dataclass(frozen=True)
class Probe:
    node0_ns: float  # model ns per dependent load on node 0 (median of the rounds)
    diff_ns: float  # node 1 minus node 0, model ns (median of the paired rounds)
    clocks: pacing.Clocks
    wall_s: float


class Blade:
    """A paced testbed's blade cb0: its SSH connection and its plugin."""

    def __init__(self, st: state.TestbedState) -> None:
        self.k = st.dilation
        self.cpi = st.cpi_ns
        self.conn = guest.connect(testbed.endpoint(st, "cb0"))
        self.ctl = plugin.Control(st.plugin_socket("cb0"))

    def close(self) -> None:
        self.ctl.close()
        self.conn.close()

    def counted(self, command: str) -> tuple[str, pacing.Clocks, float]:
        """Run ``command`` in the guest: its output, the plugin's clocks for it, wall seconds."""
        self.ctl.request("reset")
        t0 = time.monotonic()
        out = guest.run(self.conn, command, timeout=3600, blade="cb0").stdout
        return out, pacing.clocks(self.ctl.stats()), time.monotonic() - t0

    def link(self, latency_ns: int) -> None:
        self.ctl.request("set_link", blade="mb0", latency_ns=latency_ns)

    def probe(self, cpu: int = 1) -> Probe:
        out, clocks, wall = self.counted(PROBE.format(cpu=cpu))
        m = re.search(r"ns_per_load_median=([\d.]+) diff_ns_median=([-\d.]+)", out)
        assert m, out
        return Probe(float(m.group(1)) / self.k, float(m.group(2)) / self.k, clocks, wall)

    def sysbench(self, **params: Any) -> tuple[float, pacing.Clocks, float]:
        """MiB moved per second of model time: the total over the threads' mean
        execution time (divided by k). Neither sysbench's own MiB/sec, which
        also counts its threads' start-up, nor its total time, which ends with
        the slower thread's last block (one 4M block is 33 ms of model time,
        2.7 % of a run), is steady to 2 % from one run to the next."""
        out, clocks, wall = self.counted(SYSBENCH.format(**params))
        moved = re.search(r"([\d.]+) MiB transferred", out)
        busy = re.search(r"execution time \(avg/stddev\):\s+([\d.]+)/", out)
        assert moved and busy, out
        return float(moved.group(1)) / (float(busy.group(1)) / self.k), clocks, wall

    def insns_per_step(self) -> float:
        """Instructions per step of the chase loop, from the plugin's count on
        vCPU 1: two runs that differ only in their number of loads (each chases
        a quarter more in its untimed warm-up lap), by enough that the other
        work on the vCPU (about a million instructions, varying) is small.
        Other work only adds instructions, so each size counts the fewer of two
        runs: once, the first run after boot carried 8M more (2.17 per step)."""
        counts = []
        for loads in (20_000, 4_020_000):
            runs = []
            for _ in range(2):
                self.counted(f"taskset -c 1 ddc-ptrchase -s 1M -n {loads} -r 1")
                runs.append(next(v["insns"] for v in self.ctl.stats()["vcpus"] if v["vcpu"] == 1))
            counts.append(min(runs))
        return (counts[1] - counts[0]) / (4_000_000 * 5 / 4)
