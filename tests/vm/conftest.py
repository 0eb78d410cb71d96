"""Fixtures for tests that boot real guests (marked `vm`).

Each test testbed gets its own name (so a user's rack0 is never touched) and is
torn down with `ddc down` even when the test fails; the teardown then checks
that nothing of it survived.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator import paths, state
from tests.conftest import EXAMPLES

pytestmark = pytest.mark.vm


def ddc(*args: str, check: bool = True, timeout: float = 600, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    """Run the real CLI, as a user would."""
    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"ddc {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def make_rack(tmp_path: Path, name: str, **changes: object) -> Path:
    data = yaml.safe_load((EXAMPLES / "rack.yaml").read_text())
    data["name"] = name
    data.update(changes)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def leftovers(name: str) -> list[str]:
    """Everything of testbed ``name`` that still exists on the host."""
    found = []
    virsh = subprocess.run(["virsh", "-c", "qemu:///system", "list", "--all", "--name"],
                           capture_output=True, text=True, check=True)
    found += [d for d in virsh.stdout.split() if d.startswith(f"ddc-{name}-")]
    ps = subprocess.run(["pgrep", "-af", f"guest=ddc-{name}-"], capture_output=True, text=True)
    found += ps.stdout.splitlines()
    for p in (paths.pool_root() / name, state.testbed_dir(name)):
        if p.exists():
            found.append(str(p))
    with open("/proc/self/mounts") as f:
        found += [line for line in f if f"{paths.pool_root()}/{name}/" in line]
    return found


@pytest.fixture
def torn_down() -> Iterator[list[Path]]:
    """Register testbed files; each is brought down after the test, and checked clean."""
    files: list[Path] = []
    yield files
    for f in files:
        name = yaml.safe_load(f.read_text())["name"]
        ddc("down", str(f), check=False)
        assert leftovers(name) == [], f"`ddc down` left {leftovers(name)}"


@contextmanager
def booted(directory: Path, data: dict[str, Any]) -> Iterator[state.TestbedState]:
    """A testbed made from ``data`` with the real CLI, up for the block and
    brought down after it, whatever happens; checked clean afterwards."""
    name = data["name"]
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    ddc("down", str(path), check=False)  # a previous crashed run
    try:
        ddc("up", str(path), timeout=900)
        st = state.load(name)
        assert st is not None and st.plugin
        yield st
    finally:
        ddc("down", str(path), check=False)
        assert leftovers(name) == [], f"`ddc down` left {leftovers(name)}"
