"""The latency plugin's address map, from QEMU's own memory layout.

In QEMU 7.2 a TCG plugin cannot see guest-physical addresses once RAM comes from
several backends: ``qemu_plugin_hwaddr_phys_addr()`` returns
``ramblock.offset + offset_in_block + mr.addr``, where ``mr.addr`` is the
backend region's offset inside its container (``pc.ram`` on x86, which packs
the NUMA nodes' memdevs in node order). So the map is computed in those terms,
from two monitor commands read while the guest is still paused:

* ``info ramblock``: each RAMBlock's ``Offset`` (its ram_addr);
* ``info mtree``: each node memdev's offset inside ``pc.ram``.

The hole below 4 GiB does not enter: it is made by aliases of ``pc.ram`` into
the system address space, which this value never sees.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import HypervisorError
from .topology import ComputeBlade

_RAMBLOCK = re.compile(r"^\s*(?P<name>\S+)\s+\d+\s+\S+\s+0x(?P<offset>[0-9a-f]+)\s+0x(?P<used>[0-9a-f]+)"
                       r"\s+0x(?P<total>[0-9a-f]+)\s*$", re.I)
_SUBREGION = re.compile(r"^\s+(?P<start>[0-9a-f]+)-(?P<end>[0-9a-f]+) \(prio -?\d+, ram\): (?P<name>\S+)\s*$", re.I)

LOCAL_MEMDEV = "ram-node0"  # libvirt's name for node 0's backend


def memdev_id(node: int) -> str:
    """The QEMU object id of a NUMA node's memory backend (see render.qemu_args)."""
    return LOCAL_MEMDEV if node == 0 else f"ddc-node{node}"


@dataclass(frozen=True)
class Range:
    start: int
    end: int  # exclusive
    node: int
    blade: str | None  # memory blade behind the node; None for local DRAM

    def as_json(self) -> dict[str, object]:
        return {"start": hex(self.start), "end": hex(self.end), "node": self.node, "blade": self.blade}


def parse_ramblocks(text: str) -> dict[str, tuple[int, int]]:
    """``info ramblock`` -> {block name: (offset, used length)}."""
    blocks = {}
    for line in text.splitlines():
        m = _RAMBLOCK.match(line)
        if m:
            blocks[m["name"]] = (int(m["offset"], 16), int(m["used"], 16))
    return blocks


def parse_container(text: str, container: str = "pc.ram") -> dict[str, int]:
    """``info mtree`` -> {region name: offset inside ``container``}."""
    offsets: dict[str, int] = {}
    inside = False
    for line in text.splitlines():
        if line.startswith("memory-region: "):
            inside = line.split(": ", 1)[1].strip() == container
            continue
        if inside:
            m = _SUBREGION.match(line)
            if m:
                offsets[m["name"]] = int(m["start"], 16)
    return offsets


def plugin_map(blade: ComputeBlade, ramblock_text: str, mtree_text: str) -> list[Range]:
    """The ranges the plugin must be given for ``blade``, in its address terms."""
    blocks = parse_ramblocks(ramblock_text)
    offsets = parse_container(mtree_text)
    ranges = []
    for node in blade.nodes:
        name = memdev_id(node.id)
        if name not in blocks or name not in offsets:
            raise HypervisorError(f"{blade.domain}: QEMU has no RAM block {name!r} for NUMA node {node.id}",
                                  hint="is the domain built by this version of ddc? see `ddc up --dry-run`")
        offset, used = blocks[name]
        if used != node.size:
            raise HypervisorError(f"{blade.domain}: RAM block {name} is {used} bytes, the topology says "
                                  f"{node.size}")
        start = offset + offsets[name]
        ranges.append(Range(start, start + used, node.id, node.memory_blade))
    return ranges
