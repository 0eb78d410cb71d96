from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from orchestrator.errors import SpecError
from orchestrator.spec import GiB, MiB, TestbedSpec, load_testbed
from orchestrator.topology import check_fits_host, resolve, slit_distance
from tests.conftest import EXAMPLES

POOLS = Path("/dev/shm/ddc")


def spec(text: str) -> TestbedSpec:
    return TestbedSpec.model_validate(yaml.safe_load(text))


def test_example_rack_layout() -> None:
    rack = resolve(load_testbed(EXAMPLES / "rack.yaml"), POOLS)
    cb0, cb1 = rack.compute_blades
    assert cb0.domain == "ddc-rack0-cb0"
    assert [n.id for n in cb0.nodes] == [0, 1]
    assert cb0.local.cpus == (0, 1) and cb0.local.size == GiB and cb0.local.latency_ns == 100
    remote = cb0.remote_nodes[0]
    assert remote.cpus == () and remote.size == GiB and remote.latency_ns == 250
    assert remote.bandwidth_gbps == 16 and remote.memory_blade == "mb0"
    assert cb0.distances == ((10, 25), (25, 10))
    assert cb0.total_memory == 2 * GiB


def test_slices_of_one_pool_are_disjoint_files() -> None:
    rack = resolve(load_testbed(EXAMPLES / "rack.yaml"), POOLS)
    (mb0,) = rack.memory_blades
    assert mb0.pool_dir == POOLS / "rack0" / "mb0"
    paths = [s.path for s in mb0.slices]
    assert len(set(paths)) == 2 and all(p.parent == mb0.pool_dir for p in paths)
    assert [(s.offset, s.size) for s in mb0.slices] == [(0, GiB), (GiB, GiB)]
    assert mb0.used == 2 * GiB
    assert rack.compute_blades[1].remote_nodes[0].backing == mb0.slices[1].path


def test_two_remote_nodes_distances_and_ids() -> None:
    rack = resolve(spec("""
name: r
local_latency_ns: 100
memory_blades:
  - {name: near, size: 1G, latency_ns: 200}
  - {name: far, size: 1G, latency_ns: 500, distance: 60}
compute_blades:
  - {name: c, vcpus: 4, memory: 512M, remote: [{blade: near, size: 256M}, {blade: far, size: 512M}]}
"""), POOLS)
    (c,) = rack.compute_blades
    assert [(n.id, n.memory_blade, n.size) for n in c.nodes] == [
        (0, None, 512 * MiB), (1, "near", 256 * MiB), (2, "far", 512 * MiB)]
    assert c.local.cpus == (0, 1, 2, 3)
    # near: 10 * 200/100 = 20; far: given 60; near<->far through the CPUs: 20 + 60 - 10
    assert c.distances == ((10, 20, 60), (20, 10, 70), (60, 70, 10))


@pytest.mark.parametrize("latency,distance", [(100, 11), (105, 11), (250, 25), (990, 99), (100000, 254)])
def test_slit_from_latency(latency: int, distance: int) -> None:
    mb = spec(f"""
name: r
memory_blades: [{{name: m, size: 1G, latency_ns: {latency}}}]
compute_blades: [{{name: c, vcpus: 1, memory: 512M}}]
""").memory_blades[0]
    assert slit_distance(mb, 100) == distance


def test_host_memory_check() -> None:
    s = load_testbed(EXAMPLES / "rack.yaml")
    check_fits_host(s, 8 * GiB)
    with pytest.raises(SpecError, match=r"needs 6G \(2G local \+ 4G in memory blades\), more than this host's 4G"):
        check_fits_host(s, 4 * GiB)
