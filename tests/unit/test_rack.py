"""Rack MMU bookkeeping without a VM: region validation, quota, state and log."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator import rack, state
from orchestrator.errors import SpecError
from orchestrator.spec import MiB
from orchestrator.state import TestbedState
from orchestrator.testbed import plan
from tests.conftest import EXAMPLES


@pytest.fixture
def st(ddc_home: Path) -> TestbedState:
    p = plan(EXAMPLES / "rack.yaml")
    s = TestbedState(name="rack0", spec_file=str(p.spec_file), spec_digest=p.digest, uri="qemu:///system")
    for mb in p.rack.memory_blades:
        mb.pool_dir.mkdir(parents=True)
    return s


def test_new_region_is_a_file_in_its_pool_journaled_and_logged(st: TestbedState) -> None:
    reg = rack._new_region(st, "a", "mb0", "256M")
    path = Path(reg.path)
    assert path.parent.name == "mb0" and path.name == "region-a"
    assert path.stat().st_size == 256 * MiB
    assert path.stat().st_mode & 0o777 == 0o600
    assert {"kind": "file", "path": str(path)} in st.resources, "journaled for `ddc down`"
    saved = state.load("rack0")
    assert saved is not None and saved.regions["a"]["state"] == "detached"
    assert [e["event"] for e in saved.events] == ["created"]


def test_regions_share_the_memory_blades_quota(st: TestbedState) -> None:
    # mb0 is 4G; the two slices take 2G
    rack._new_region(st, "a", "mb0", "1G")
    with pytest.raises(SpecError, match="does not fit in memory blade mb0: 1G of 4G is free"):
        rack._new_region(st, "b", "mb0", "2G")
    rack._new_region(st, "c", "mb0", "1G")


@pytest.mark.parametrize("args,message", [
    (("x", "mb0", "96M"), "not a power of two"),
    (("x", "mb9", "64M"), "no memory blade 'mb9'"),
    (("../x", "mb0", "64M"), "is not a safe name"),
    (("x", "mb0", "64Q"), "is not a size"),
    (("x", None, "64M"), "needs --blade"),
])
def test_bad_regions(st: TestbedState, args: tuple, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        rack._new_region(st, *args)
    assert not st.regions and not st.resources, "nothing created"


def test_default_names_count_up(st: TestbedState) -> None:
    assert rack._new_region(st, None, "mb0", "64M").name == "r0"
    assert rack._new_region(st, None, "mb0", "64M").name == "r1"
