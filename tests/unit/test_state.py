from __future__ import annotations

import json
import multiprocessing
from multiprocessing.synchronize import Event
from pathlib import Path

import pytest

from orchestrator import state
from orchestrator.errors import StateError
from orchestrator.state import BladeRecord, Phase, TestbedState


def test_journal_is_durable_and_ordered(ddc_home: Path) -> None:
    st = TestbedState(name="t", spec_file="/x.yaml", spec_digest="d", uri="qemu:///system", accel="tcg")
    st.blades["cb0"] = BladeRecord(domain="ddc-t-cb0", ssh_port=40000, nodes=[{"node": 0}])
    st.record("file", path=Path("/a"))
    st.record("domain", name="ddc-t-cb0")
    st.record("file", path=Path("/a"))  # a retried step is journaled once
    raw = json.loads((st.directory / "state.json").read_text())
    assert raw["resources"] == [{"kind": "file", "path": "/a"}, {"kind": "domain", "name": "ddc-t-cb0"}]
    again = state.load("t")
    assert again is not None and again.blades["cb0"].ssh_port == 40000 and again.phase == Phase.CREATING
    assert state.names() == ["t"]


def _hold(name: str, home: str, ready: Event, stop: Event) -> None:
    import os
    os.environ["DDC_HOME"] = home
    with state.locked(name):
        ready.set()
        stop.wait(10)


def test_second_holder_is_refused(ddc_home: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    ready, stop = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_hold, args=("t", str(ddc_home / "home"), ready, stop))
    proc.start()
    try:
        assert ready.wait(10)
        with pytest.raises(StateError, match=rf"busy: another ddc process \(pid {proc.pid}\)"):
            with state.locked("t"):
                pass
    finally:
        stop.set()
        proc.join()
    with state.locked("t"):  # free again once the holder is gone
        pass
