"""The resolved rack: what each blade's NUMA layout is, and where its memory lives.

Pure functions of the spec (plus a pool root directory), so every number here is
unit-tested without a VM.

Memory blades are pools on the host. QEMU 7.2's ``memory-backend-file`` has no
``offset=``, so a slice cannot be a byte range of one big file; instead a pool is a
directory (a tmpfs mount sized to the blade, i.e. a quota) holding one file per
slice. No two guests ever map the same bytes as RAM.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import SpecError
from .spec import CacheLevelSpec, MemoryBladeSpec, TestbedSpec, format_size

LOCAL_DISTANCE = 10  # ACPI SLIT: a node's distance to itself


@dataclass(frozen=True)
class NumaNode:
    id: int
    size: int
    cpus: tuple[int, ...]  # empty for a CPU-less (remote) node
    latency_ns: int
    bandwidth_gbps: float | None
    memory_blade: str | None = None  # None: the blade's own DRAM
    backing: Path | None = None  # the slice file of a remote node

    @property
    def remote(self) -> bool:
        return self.memory_blade is not None


@dataclass(frozen=True)
class Slice:
    memory_blade: str
    compute_blade: str
    node: int
    offset: int  # where the slice sits in the pool's quota (for reports; each slice is a file)
    size: int
    path: Path


@dataclass(frozen=True)
class MemoryBlade:
    name: str
    size: int
    latency_ns: int
    bandwidth_gbps: float | None
    pool_dir: Path
    slices: tuple[Slice, ...]

    @property
    def used(self) -> int:
        return sum(s.size for s in self.slices)


@dataclass(frozen=True)
class ComputeBlade:
    name: str
    domain: str  # libvirt domain name
    vcpus: int
    nodes: tuple[NumaNode, ...]
    distances: tuple[tuple[int, ...], ...]  # SLIT, [from][to]

    @property
    def local(self) -> NumaNode:
        return self.nodes[0]

    @property
    def remote_nodes(self) -> tuple[NumaNode, ...]:
        return self.nodes[1:]

    @property
    def total_memory(self) -> int:
        return sum(n.size for n in self.nodes)


@dataclass(frozen=True)
class Rack:
    name: str
    uri: str
    accel: str
    image: str
    local_latency_ns: int
    local_bandwidth_gbps: float
    memory_blades: tuple[MemoryBlade, ...]
    compute_blades: tuple[ComputeBlade, ...]
    mode: str = "inject"  # the latency plugin's mode, or "off"
    caches: tuple[CacheLevelSpec, ...] = ()
    dilation: float | str = "auto"  # paced mode: k, or "auto" (measured at up)
    cpi_ns: float = 0.4  # paced mode: model time of one instruction
    kernel_args: tuple[str, ...] = ()  # added to every compute blade's kernel command line


def domain_name(testbed: str, blade: str) -> str:
    return f"ddc-{testbed}-{blade}"


def slit_distance(blade: MemoryBladeSpec, local_latency_ns: int) -> int:
    """SLIT distance of a memory blade as seen from a compute node.

    Unless the file gives one, scale the local distance (10) by the latency ratio,
    the way firmware derives SLIT from HMAT; ACPI reserves 255 and wants > 10.
    """
    if blade.distance is not None:
        return blade.distance
    return max(LOCAL_DISTANCE + 1, min(254, round(LOCAL_DISTANCE * blade.latency_ns / local_latency_ns)))


def resolve(spec: TestbedSpec, pool_root: Path) -> Rack:
    """Turn a validated spec into the rack that ``up`` will build."""
    pools = {mb.name: mb for mb in spec.memory_blades}
    testbed_pools = pool_root / spec.name
    slices: dict[str, list[Slice]] = {name: [] for name in pools}
    computes: list[ComputeBlade] = []
    for cb in spec.compute_blades:
        nodes = [NumaNode(id=0, size=cb.memory, cpus=tuple(range(cb.vcpus)),
                          latency_ns=spec.local_latency_ns, bandwidth_gbps=spec.local_bandwidth_gbps)]
        to_node = [LOCAL_DISTANCE]  # distance from node 0 to each node
        for piece in cb.remote:
            pool = pools[piece.blade]
            node_id = len(nodes)
            path = testbed_pools / pool.name / f"{cb.name}-node{node_id}"
            offset = sum(s.size for s in slices[pool.name])
            slices[pool.name].append(Slice(memory_blade=pool.name, compute_blade=cb.name, node=node_id,
                                           offset=offset, size=piece.size, path=path))
            nodes.append(NumaNode(id=node_id, size=piece.size, cpus=(), latency_ns=pool.latency_ns,
                                  bandwidth_gbps=pool.bandwidth_gbps, memory_blade=pool.name,
                                  backing=path))
            to_node.append(slit_distance(pool, spec.local_latency_ns))
        computes.append(ComputeBlade(name=cb.name, domain=domain_name(spec.name, cb.name), vcpus=cb.vcpus,
                                     nodes=tuple(nodes), distances=_distance_matrix(to_node)))
    memories = tuple(
        MemoryBlade(name=mb.name, size=mb.size, latency_ns=mb.latency_ns, bandwidth_gbps=mb.bandwidth_gbps,
                    pool_dir=testbed_pools / mb.name, slices=tuple(slices[mb.name]))
        for mb in spec.memory_blades)
    return Rack(name=spec.name, uri=spec.uri, accel=spec.accel.value, image=spec.image,
                local_latency_ns=spec.local_latency_ns, local_bandwidth_gbps=spec.local_bandwidth_gbps,
                memory_blades=memories, compute_blades=tuple(computes), mode=spec.mode.value,
                caches=spec.caches, dilation=spec.dilation, cpi_ns=spec.cpi_ns,
                kernel_args=spec.kernel_args)


def _distance_matrix(to_node: list[int]) -> tuple[tuple[int, ...], ...]:
    """Full SLIT from the distances of node 0 to every node.

    Two remote nodes of one blade reach each other only through the blade's CPUs,
    so their distance is the sum of the two hops, counted from the local one.
    """
    n = len(to_node)
    rows = []
    for i in range(n):
        row = []
        for j in range(n):
            if i == j:
                row.append(LOCAL_DISTANCE)
            elif i == 0 or j == 0:
                row.append(to_node[max(i, j)])
            else:
                row.append(min(254, to_node[i] + to_node[j] - LOCAL_DISTANCE))
        rows.append(tuple(row))
    return tuple(rows)


def check_fits_host(spec: TestbedSpec, host_memory: int, source: str = "testbed") -> None:
    """Refuse a rack whose memory does not fit in this host's RAM."""
    total = spec.total_memory()
    if total > host_memory:
        local = sum(cb.memory for cb in spec.compute_blades)
        pools = sum(mb.size for mb in spec.memory_blades)
        raise SpecError(
            f"{source}: compute_blades[*].memory + memory_blades[*].size: the rack needs "
            f"{format_size(total)} ({format_size(local)} local + {format_size(pools)} in memory blades), "
            f"more than this host's {format_size(host_memory // (1024 * 1024) * 1024 * 1024)} of RAM",
            hint="shrink the blades' memory or the memory blades' size")


def host_memory() -> int:
    """MemTotal of this host, in bytes."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise OSError("no MemTotal in /proc/meminfo")
