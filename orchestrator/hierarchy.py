"""Memory-hierarchy figures derived from the plugin's counters.

The plugin counts; this module turns counts into what researchers read: miss
ratios per level and the average memory access time (AMAT) seen at each level,

    AMAT(level i) = hit_ns(i) + miss_ratio(i) * AMAT(level i+1)
    AMAT(memory)  = sum over nodes of memory accesses * node latency / memory accesses
                    + queueing on the links,

with the hit times from the testbed file's ``caches[].hit_ns`` and the node
latencies from ``local_latency_ns`` and the memory blades' ``latency_ns``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LevelFigures:
    name: str
    hits: int
    misses: int
    hit_ns: float
    amat_ns: float

    @property
    def accesses(self) -> int:
        return self.hits + self.misses

    @property
    def miss_ratio(self) -> float:
        return self.misses / self.accesses if self.accesses else 0.0


@dataclass(frozen=True)
class Figures:
    insns: int
    loads: int
    stores: int
    levels: list[LevelFigures]
    memory_amat_ns: float
    nodes: list[dict[str, int]]  # node, accesses, memory (those that missed every level)
    modelled_stall_ns: int
    injected_ns: int
    blades: list[dict[str, Any]]


def figures(stats: dict[str, Any], hit_ns: dict[str, float], node_latency_ns: dict[int, float]) -> Figures:
    """Derive figures from a plugin ``stats`` reply (its ``total`` part)."""
    total = stats["total"]
    nodes = total["nodes"]
    memory = sum(n["memory"] for n in nodes)
    queue = sum(b.get("queue_ns", 0) for b in stats.get("blades", []))
    memory_amat = 0.0
    if memory:
        memory_amat = (sum(n["memory"] * node_latency_ns.get(n["node"], 0.0) for n in nodes) + queue) / memory
    levels: list[LevelFigures] = []
    below = memory_amat
    for name, counts in reversed(list(total["levels"].items())):
        lf = LevelFigures(name=name, hits=counts["hits"], misses=counts["misses"], hit_ns=hit_ns.get(name, 0.0),
                          amat_ns=0.0)
        amat = lf.hit_ns + lf.miss_ratio * below
        levels.insert(0, LevelFigures(lf.name, lf.hits, lf.misses, lf.hit_ns, amat))
        below = amat
    return Figures(insns=total["insns"], loads=total["loads"], stores=total["stores"], levels=levels,
                   memory_amat_ns=memory_amat, nodes=nodes, modelled_stall_ns=total["modelled_stall_ns"],
                   injected_ns=total["injected_ns"], blades=stats.get("blades", []))
