from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.errors import HypervisorError
from orchestrator.hypervisor import Hypervisor


def test_unreachable_libvirtd_says_how_to_start_it(tmp_path: Path) -> None:
    uri = f"qemu:///system?socket={tmp_path}/no-libvirtd.sock"
    with pytest.raises(HypervisorError) as err:
        with Hypervisor(uri):
            pass
    assert f"cannot connect to libvirt at {uri}" in err.value.message
    assert err.value.hint is not None and "libvirtd -d" in err.value.hint
