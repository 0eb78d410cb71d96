"""The plugin's address map, computed from monitor output recorded on QEMU 7.2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.errors import HypervisorError
from orchestrator.memmap import parse_container, parse_ramblocks, plugin_map, region_range
from orchestrator.spec import GiB, load_testbed
from orchestrator.topology import resolve
from tests.conftest import DATA, EXAMPLES

QEMU = DATA / "qemu-7.2"


def test_parse_ramblocks() -> None:
    blocks = parse_ramblocks((QEMU / "rack-cb0-info-ramblock.txt").read_text())
    assert blocks["ram-node0"] == (0, GiB)
    assert blocks["ddc-node1"] == (GiB, GiB)
    assert blocks["pc.bios"] == (0x80000000, 0x40000)
    assert "0000:00:02.0/virtio-net-pci.rom" in blocks


def test_parse_container() -> None:
    assert parse_container((QEMU / "rack-cb0-info-mtree.txt").read_text()) == {"ram-node0": 0, "ddc-node1": GiB}


def test_example_rack_map() -> None:
    blade = resolve(load_testbed(EXAMPLES / "rack.yaml"), Path("/dev/shm/ddc")).compute_blades[0]
    ranges = plugin_map(blade, (QEMU / "rack-cb0-info-ramblock.txt").read_text(),
                        (QEMU / "rack-cb0-info-mtree.txt").read_text())
    # node 1: ram_addr 1G plus its 1G offset inside pc.ram: the plugin sees 2G..3G
    assert [(r.start, r.end, r.node, r.blade) for r in ranges] == [(0, GiB, 0, None), (2 * GiB, 3 * GiB, 1, "mb0")]
    assert ranges[1].as_json() == {"start": "0x80000000", "end": "0xc0000000", "node": 1, "blade": "mb0"}


def test_missing_block_is_an_error() -> None:
    blade = resolve(load_testbed(EXAMPLES / "rack.yaml"), Path("/dev/shm/ddc")).compute_blades[0]
    with pytest.raises(HypervisorError, match="no RAM block 'ddc-node1'"):
        plugin_map(blade, "ram-node0 4 KiB 0x0 0x40000000 0x40000000\n",
                   (QEMU / "rack-cb0-info-mtree.txt").read_text())


def test_region_range_is_ram_addr_plus_bar_address() -> None:
    # Recorded with a 64 MiB region `ra` plugged and enabled: RAM block at
    # ram_addr 0x80340000, BAR 2 at 0x240000000 (behind a root port). In a
    # guest, this range is the one the plugin's accesses to the region fall in.
    blocks = (QEMU / "region-ramblock.txt").read_text()
    pci = json.loads((QEMU / "region-query-pci.json").read_text())
    r = region_range("ddc-region-ra", 1, "mb0", blocks, pci)
    assert (r.start, r.end, r.node, r.blade) == (0x2C0340000, 0x2C0340000 + (64 << 20), 1, "mb0")


def test_region_range_of_an_unplugged_region_is_an_error() -> None:
    blocks = (QEMU / "region-ramblock.txt").read_text()
    pci = json.loads((QEMU / "region-query-pci.json").read_text())
    with pytest.raises(HypervisorError, match="ddc-region-rb"):
        region_range("ddc-region-rb", 1, "mb0", blocks, pci)
    with pytest.raises(HypervisorError, match="not .*enabled"):
        region_range("ddc-region-ra", 1, "mb0", blocks, [])
