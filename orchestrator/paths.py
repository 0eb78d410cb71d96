"""Where the orchestrator keeps things on the host.

Everything lives under ``DDC_HOME`` (default ``/var/lib/ddc``), except memory-blade
pools, which live under ``DDC_POOL_ROOT`` (default ``/dev/shm/ddc``) because they
must be RAM.
"""

from __future__ import annotations

import os
from pathlib import Path


def ddc_home() -> Path:
    return Path(os.environ.get("DDC_HOME", "/var/lib/ddc"))


def image_cache() -> Path:
    return ddc_home() / "images"


def state_root() -> Path:
    return ddc_home() / "testbeds"


def pool_root() -> Path:
    return Path(os.environ.get("DDC_POOL_ROOT", "/dev/shm/ddc"))


def run_root() -> Path:
    """Sockets and other runtime files (short paths: AF_UNIX allows 107 bytes)."""
    return Path(os.environ.get("DDC_RUN_DIR", "/run/ddc"))
