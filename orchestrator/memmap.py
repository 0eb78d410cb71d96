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

Regions of the Rack MMU (``rack.py``) are hot-plugged ivshmem BARs: their
backend's memory region is the BAR itself, mapped by the PCI code at the BAR's
guest-physical address, so there ``mr.addr`` is that address and the value is
``ramblock.offset + offset_in_block + BAR address``. The BAR address comes from
QMP ``query-pci`` once the guest has enabled the device (checked in a guest: 32
MiB written to a region counted 525,041 lines on its memory blade with this
range in the map, none with the BAR address alone). Not from ``info mtree -f``:
on QEMU 7.2 that command keeps references to the flat views it prints, so a
region's RAM block outlives its ``object-del`` and plugging a region of the same
name again aborts QEMU ("RAMBlock ... already registered").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .errors import HypervisorError
from .topology import ComputeBlade

_RAMBLOCK = re.compile(r"^\s*(?P<name>\S+)\s+\d+\s+\S+\s+0x(?P<offset>[0-9a-f]+)\s+0x(?P<used>[0-9a-f]+)"
                       r"\s+0x(?P<total>[0-9a-f]+)\s*$", re.I)
_SUBREGION = re.compile(r"^\s+(?P<start>[0-9a-f]+)-(?P<end>[0-9a-f]+) \(prio -?\d+, ram\): (?P<name>\S+)\s*$", re.I)

LOCAL_MEMDEV = "ram-node0"  # libvirt's name for node 0's backend


def memdev_id(node: int) -> str:
    """The QEMU object id of a NUMA node's memory backend (see render.qemu_args)."""
    return LOCAL_MEMDEV if node == 0 else f"ddc-node{node}"


def region_id(name: str) -> str:
    """The QEMU object id of a Rack MMU region's memory backend, and of its
    ivshmem device (see rack.py)."""
    return f"ddc-region-{name}"


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


def pci_bar(devices: list[dict[str, Any]], qdev_id: str, bar: int) -> tuple[int, int] | None:
    """(address, size) of BAR ``bar`` of device ``qdev_id`` in a QMP ``query-pci``
    reply (its buses' ``devices``, searched through bridges), or None."""
    for dev in devices:
        if dev.get("qdev_id") == qdev_id:
            for region in dev.get("regions", []):
                if region.get("bar") == bar and region.get("type") == "memory":
                    return region["address"], region["size"]
            return None
        found = pci_bar(dev.get("pci_bridge", {}).get("devices", []), qdev_id, bar)
        if found:
            return found
    return None


IVSHMEM_BAR = 2  # ivshmem-plain's shared memory


def region_range(qom_id: str, node: int, memory_blade: str, ramblock_text: str,
                 query_pci: list[dict[str, Any]]) -> Range:
    """The plugin range of a hot-plugged region whose backend and device are both
    ``qom_id``, from ``info ramblock`` and QMP ``query-pci``."""
    blocks = {name.rsplit("/", 1)[-1]: v for name, v in parse_ramblocks(ramblock_text).items()}
    bar = None
    for bus in query_pci:
        bar = bar or pci_bar(bus.get("devices", []), qom_id, IVSHMEM_BAR)
    if qom_id not in blocks or bar is None or bar[0] in (0, 0xFFFFFFFFFFFFFFFF):
        raise HypervisorError(f"QEMU shows no mapped RAM for {qom_id!r}",
                              hint="the region's device is not (or no longer) enabled by the guest")
    offset, used = blocks[qom_id]
    if bar[1] != used:
        raise HypervisorError(f"{qom_id}: BAR {IVSHMEM_BAR} is {bar[1]} bytes but its RAM block {used}")
    start = offset + bar[0]
    return Range(start, start + used, node, memory_blade)
