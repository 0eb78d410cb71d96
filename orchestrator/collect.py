"""What a run collects besides the workload's output: guest counters before and
after, 1-second time series, the plugin's hierarchy statistics, libvirt's domain
statistics. Shell snippets that run in the guest, and pure parsers of their
output (tested against recorded guest output in ``tests/data/guest``).
"""

from __future__ import annotations

import re
from typing import Any

from .hierarchy import Figures

# The /proc/vmstat counters a tiering study reads.
_VMSTAT = re.compile(r"^(numa_|pgmigrate|pgdemote|pgpromote|thp_migration|pgfault$|pgmajfault$|nr_free_pages$)")

# One snapshot, with bash builtins only (no process to start under TCG): all of
# /proc/vmstat, then per node its numastat and meminfo. The parser keeps what
# VMSTAT_RE names.
SNAPSHOT = (
    'echo "$(</proc/vmstat)"; '
    "for n in /sys/devices/system/node/node[0-9]*; do "
    'echo "@node ${n##*node}"; echo "$(<"$n/numastat")"; echo "$(<"$n/meminfo")"; done'
)


def sampler(interval: float, out: str, tick: str) -> str:
    """A background loop in the guest: every interval, a time stamp and /proc/vmstat.
    It waits with ``read -t`` on ``tick``, a FIFO nobody writes, so that sampling
    starts no process (each costs about 0.1 s of a vCPU under TCG)."""
    return (f'( exec 9<>{tick}; while :; do echo "@t $EPOCHREALTIME"; echo "$(</proc/vmstat)"; '
            f"read -t {interval:g} -u 9; done ) > {out} 2>/dev/null &")


Counters = dict[tuple[str, int | None, str], float]  # (source, node, name) -> value

_MEMINFO_RE = re.compile(r"^Node \d+ (\S+):\s+(\d+)( kB)?$")


def parse_snapshot(text: str) -> Counters:
    """vmstat lines (node None), then ``@node N`` sections of numastat and meminfo lines.
    meminfo values are converted to bytes where the kernel says kB."""
    out: Counters = {}
    node: int | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("@node "):
            node = int(line.split()[1])
            continue
        m = _MEMINFO_RE.match(line)
        if m:
            name, value, kb = m.groups()
            out[("meminfo", node, name.rstrip(":"))] = float(value) * (1024 if kb else 1)
            continue
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            if node is not None:
                out[("numastat", node, parts[0])] = float(parts[1])
            elif _VMSTAT.match(parts[0]):
                out[("vmstat", None, parts[0])] = float(parts[1])
    return out


def pair(before: Counters, after: Counters) -> list[tuple[str, int | None, str, float | None, float | None]]:
    """Rows for the store's ``counters`` table: every key seen in either snapshot."""
    keys = sorted(set(before) | set(after), key=lambda k: (k[0], -1 if k[1] is None else k[1], k[2]))
    return [(src, node, name, before.get((src, node, name)), after.get((src, node, name)))
            for src, node, name in keys]


def parse_samples(text: str, t0: float) -> list[tuple[float, str, str, float]]:
    """The guest sampler's output as (seconds since t0, 'guest', counter, value)."""
    out: list[tuple[float, str, str, float]] = []
    t: float | None = None
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 2:
            continue
        if parts[0] == "@t":
            try:
                t = float(parts[1]) - t0
            except ValueError:
                t = None
        elif t is not None and _VMSTAT.match(parts[0]) and parts[1].lstrip("-").isdigit():
            out.append((round(t, 3), "guest", parts[0], float(parts[1])))
    return out


def plugin_sample(stats: dict[str, Any]) -> dict[str, float]:
    """The counters of a plugin ``stats`` reply worth a time series (totals over vCPUs)."""
    total = stats["total"]
    out = {name: float(total[name]) for name in ("insns", "loads", "stores", "injected_ns", "modelled_stall_ns")
           if name in total}
    for level, counts in total.get("levels", {}).items():
        out[f"{level}.misses"] = float(counts["misses"])
    for node in total.get("nodes", []):
        out[f"node{node['node']}.memory"] = float(node["memory"])
    for blade in stats.get("blades", []):
        if "queue_ns" in blade:
            out[f"{blade['name']}.queue_ns"] = float(blade["queue_ns"])
    return out


def level_rows(fig: Figures) -> list[tuple[str, int, int, float, float, float]]:
    return [(lv.name, lv.hits, lv.misses, lv.miss_ratio, lv.hit_ns, lv.amat_ns) for lv in fig.levels]


def node_rows(fig: Figures, latencies: dict[int, float]) -> list[tuple[int, int, int, float | None]]:
    return [(int(n["node"]), int(n["accesses"]), int(n["memory"]), latencies.get(int(n["node"])))
            for n in fig.nodes]


def flat_domstats(stats: dict[str, Any]) -> dict[str, float]:
    """libvirt's domain statistics, numbers only (cpu.time, vcpu.N.time, block.*, net.*, ...)."""
    return {k: float(v) for k, v in stats.items() if isinstance(v, int | float) and not isinstance(v, bool)}
