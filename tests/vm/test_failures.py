"""Failed, interrupted and concurrent `up`: clear errors, and `down` cleans all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator import paths, state
from tests.vm.conftest import ddc, leftovers, make_rack

pytestmark = pytest.mark.vm


def test_blade_that_never_answers(tmp_path: Path, torn_down: list[Path]) -> None:
    rack = make_rack(tmp_path, "t-noboot")
    torn_down.append(rack)
    # Nothing can boot to sshd in 2 s under TCG: this is the "never boots" path.
    proc = ddc("up", str(rack), check=False, env={"DDC_BOOT_TIMEOUT": "2"})
    assert proc.returncode == 1, proc.stderr
    assert "no SSH login at root@127.0.0.1:" in proc.stderr
    assert "ddc down" in proc.stderr  # the hint
    st = state.load("t-noboot")
    assert st is not None and st.phase == "failed"
    again = ddc("up", str(rack), check=False)
    assert again.returncode == 1 and "from an `up` that did not finish" in again.stderr
    ddc("down", str(rack))
    assert leftovers("t-noboot") == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupted_up(tmp_path: Path, torn_down: list[Path], sig: signal.Signals) -> None:
    rack = make_rack(tmp_path, "t-sigint")
    torn_down.append(rack)
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "up", str(rack)],
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    deadline = time.monotonic() + 300
    seen = ""
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        seen += line
        if "started" in line or not line:
            break
    assert "started" in seen, seen
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, seen + err
    assert "ddc down" in err
    assert leftovers("t-sigint"), "the half-made testbed should still be there for `down`"
    running = subprocess.run(["virsh", "-c", "qemu:///system", "list", "--name"], capture_output=True,
                             text=True, check=True).stdout.split()
    assert not [d for d in running if d.startswith("ddc-t-sigint-")], "up stops the blades it started"
    st = state.load("t-sigint")
    assert st is not None and st.phase == "failed"
    ddc("down", str(rack))
    assert leftovers("t-sigint") == []


def test_concurrent_up_is_refused(tmp_path: Path) -> None:
    rack = make_rack(tmp_path, "t-lock")
    read, write = os.pipe()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import os,sys; from orchestrator import state\n"
         "with state.locked('t-lock'):\n os.write(1, b'x'); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=write)
    os.close(write)
    try:
        assert os.read(read, 1) == b"x"
        proc = ddc("up", str(rack), check=False)
        assert proc.returncode == 1
        assert f"busy: another ddc process (pid {holder.pid})" in proc.stderr
        assert leftovers("t-lock") == []
    finally:
        holder.communicate(b"")
        os.close(read)
    (state.testbed_dir("t-lock").parent / "t-lock.lock").unlink(missing_ok=True)


def test_remains_without_state_are_refused(tmp_path: Path) -> None:
    rack = make_rack(tmp_path, "t-stale")
    stale = paths.pool_root() / "t-stale"
    stale.mkdir(parents=True)
    try:
        proc = ddc("up", str(rack), check=False)
        assert proc.returncode == 1
        assert "has no state, but remains of an earlier run exist" in proc.stderr
        assert "ddc down t-stale" in proc.stderr
        assert state.load("t-stale") is None
    finally:
        ddc("down", "t-stale")
    assert leftovers("t-stale") == []
