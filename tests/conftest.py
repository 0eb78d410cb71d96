"""Shared fixtures. Unit tests (tests/unit) need no VM; tests marked `vm` boot real
guests through libvirt and are collected from tests/vm."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture
def ddc_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point DDC_HOME and the pool root at a temporary directory."""
    monkeypatch.setenv("DDC_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DDC_POOL_ROOT", str(tmp_path / "pools"))
    return tmp_path
