"""Rack MMU bookkeeping without a VM: region validation, quota, state and log."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from orchestrator import rack, state
from orchestrator.errors import SpecError, StateError
from orchestrator.spec import MiB
from orchestrator.state import BladeRecord, Phase, TestbedState
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


@pytest.fixture
def up(ddc_home: Path, tmp_path: Path) -> TestbedState:
    """A testbed that is up (no VM): two memory blades, compute blades cb0 and cb1,
    region a on mb0 and region b on mb1, both detached."""
    data = yaml.safe_load((EXAMPLES / "rack.yaml").read_text())
    data["memory_blades"].append({**data["memory_blades"][0], "name": "mb1", "size": "1G"})
    spec = tmp_path / "rack.yaml"
    spec.write_text(yaml.safe_dump(data))
    p = plan(spec)
    blades = {b: BladeRecord(domain=f"ddc-rack0-{b}", ssh_port=1) for b in ("cb0", "cb1")}
    s = TestbedState(name="rack0", spec_file=str(p.spec_file), spec_digest=p.digest, uri="qemu:///system",
                     phase=Phase.UP, blades=blades)
    for mb in p.rack.memory_blades:
        mb.pool_dir.mkdir(parents=True)
    rack._new_region(s, "a", "mb0", "64M")
    rack._new_region(s, "b", "mb1", "64M")
    return s


@pytest.mark.parametrize("blade,region,error,message", [
    ("cb0", "a", SpecError, "--region: cb0 is a compute blade; a region fails on its memory blade"),
    ("mb9", "a", SpecError, "has no memory blade 'mb9'.*memory blades: mb0, mb1"),
    ("mb0", "zz", SpecError, "has no region 'zz'.*regions: a, b"),
    ("mb0", "b", SpecError, r"region 'b' is on memory blade mb1, not mb0.*`ddc fail FILE mb1 --region b`"),
])
def test_fail_region_refuses_bad_input_and_changes_nothing(up: TestbedState, blade: str, region: str,
                                                           error: type, message: str) -> None:
    before = (state.testbed_dir("rack0") / "state.json").read_text()
    with pytest.raises(error, match=message):
        rack.fail_region("rack0", blade, region)
    assert (state.testbed_dir("rack0") / "state.json").read_text() == before, "nothing changed"
    assert all(Path(r["path"]).exists() for r in up.regions.values())


def test_a_failed_region_is_listed_and_cannot_be_used_again(up: TestbedState) -> None:
    reg, pids, timings = rack.fail_region("rack0", "mb0", "a")  # detached: no guest to tell
    assert (reg.state, reg.owner, pids, timings) == ("failed", None, [], {})
    assert not Path(reg.path).exists(), "its bytes are gone"
    regs, events = rack.list_regions("rack0")
    assert {r.name: r.state for r in regs} == {"a": "failed", "b": "detached"}
    assert [e["event"] for e in events[-2:]] == ["region failed", "failure injected"]
    assert events[-2]["memory_blade"] == "mb0" and events[-2]["time"] <= events[-1]["time"]
    with pytest.raises(StateError, match="has already failed"):
        rack.fail_region("rack0", "mb0", "a")
    for attempt in (lambda: rack.attach("rack0", "cb0", region="a"), lambda: rack.grant("rack0", "a", "cb1"),
                    lambda: rack.detach("rack0", "a")):
        with pytest.raises(StateError, match="region 'a' has failed: its memory is gone"):
            attempt()


def test_an_event_logged_by_another_process_is_not_overwritten(up: TestbedState) -> None:
    # `ddc fail` holds its copy of the state while `ddc monitor` logs a notification
    monitor_copy = state.load("rack0")
    assert monitor_copy is not None
    monitor_copy.log("failure notified", blade="mb0")
    up.log("machine checks injected", blade="cb0")
    saved = state.load("rack0")
    assert saved is not None
    assert [e["event"] for e in saved.events][-2:] == ["failure notified", "machine checks injected"]
