"""The guest image boots under plain QEMU and honours the fw_cfg contract (images/README.md).

Uses bench/boot_one.py's helpers (the same VM shape the orchestrator renders),
not libvirt, so it tests the image alone.  Builds the image if it is not cached.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from orchestrator import image
from orchestrator.runner import run

pytestmark = pytest.mark.vm

REPO = Path(__file__).resolve().parent.parent.parent
BOOT_TIMEOUT = 90.0


def load_boot_one() -> ModuleType:
    spec = importlib.util.spec_from_file_location("boot_one", REPO / "bench" / "boot_one.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["boot_one"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def boot_one() -> ModuleType:
    if os.geteuid() != 0 or shutil.which("qemu-system-x86_64") is None:
        pytest.skip("needs root and qemu-system-x86_64")
    return load_boot_one()


@pytest.fixture(scope="module")
def guest_image() -> image.GuestImage:
    return image.build_image("debian-bookworm")


@contextlib.contextmanager
def booted(boot_one: ModuleType, img: image.GuestImage, tmp_path: Path, names: list[str],
           **prepare: object) -> Iterator[list[object]]:
    blades = [boot_one.prepare(img, name, tmp_path, **prepare) for name in names]
    with contextlib.ExitStack() as stack:
        start = time.monotonic()
        for blade in blades:
            stack.enter_context(boot_one.qemu(boot_one.qemu_argv(img, blade, "tcg"), blade))
        for blade in blades:
            deadline = start + BOOT_TIMEOUT
            ok = boot_one.wait_banner(blade.port, deadline) and boot_one.login(blade, deadline)
            if not ok:
                tail = blade.serial.read_text(errors="replace").splitlines()[-30:]
                pytest.fail(f"{blade.name} gave no SSH login in {BOOT_TIMEOUT:.0f} s; console:\n"
                            + "\n".join(tail))
        yield blades
    for blade in blades:
        assert not blade.shm.exists()


def remote(boot_one: ModuleType, blade: object, command: str) -> str:
    return run(boot_one.ssh_argv(blade, command), timeout=60).stdout


def test_blade_gets_its_identity_from_fw_cfg(boot_one: ModuleType, guest_image: image.GuestImage,
                                             tmp_path: Path) -> None:
    with booted(boot_one, guest_image, tmp_path, ["cb7"]) as (blade,):
        # The login itself used StrictHostKeyChecking=yes against the injected key.
        assert remote(boot_one, blade, "hostname").strip() == "cb7"
        assert "127.0.1.1\tcb7" in remote(boot_one, blade, "cat /etc/hosts")
        keys = remote(boot_one, blade, "ls /etc/ssh | grep ssh_host_").split()
        assert keys == ["ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"] or keys == [
            "ssh_host_ed25519_key"]  # the .pub comes just after sshd starts
        assert remote(boot_one, blade, "stat -c %a /etc/ssh/ssh_host_ed25519_key "
                                       "/root/.ssh/authorized_keys").split() == ["600", "600"]
        pub = remote(boot_one, blade, "while [ ! -s /etc/ssh/ssh_host_ed25519_key.pub ]; do sleep 0.2; done;"
                                      " cat /etc/ssh/ssh_host_ed25519_key.pub").split()[:2]
        assert pub == (blade.workdir / "host_key.pub").read_text().split()[:2]
        effective = remote(boot_one, blade, "sshd -T").lower().splitlines()
        assert "passwordauthentication no" in effective
        assert "permitrootlogin without-password" in effective
        assert "hostkey /etc/ssh/ssh_host_ed25519_key" in effective
        assert remote(boot_one, blade, "ip -br -4 addr show eth0").split()[2] == "10.0.2.15/24"
        states = remote(boot_one, blade, "systemctl is-active redis-server memcached; true").split()
        assert states == ["inactive", "inactive"]
        numa = remote(boot_one, blade, "numactl -H")
        assert "available: 2 nodes (0-1)" in numa and "node 1 cpus:\n" in numa
        assert remote(boot_one, blade, "systemctl list-units --state=failed --no-legend").strip() == ""


def test_network_file_from_fw_cfg_replaces_the_default(boot_one: ModuleType, guest_image: image.GuestImage,
                                                       tmp_path: Path) -> None:
    network = "[Match]\nName=eth0\n\n[Network]\nAddress=10.0.2.20/24\nGateway=10.0.2.2\n"
    with booted(boot_one, guest_image, tmp_path, ["cb8"], network=network, guest_ip="10.0.2.20") as (blade,):
        assert remote(boot_one, blade, "ip -br -4 addr show eth0").split()[2] == "10.0.2.20/24"
        assert remote(boot_one, blade, "cat /run/systemd/network/10-ddc.network") == network


def test_two_blades_boot_side_by_side(boot_one: ModuleType, guest_image: image.GuestImage,
                                      tmp_path: Path) -> None:
    with booted(boot_one, guest_image, tmp_path, ["cb0", "cb1"]) as blades:
        names = [remote(boot_one, b, "hostname").strip() for b in blades]
        ids = {remote(boot_one, b, "cat /etc/machine-id").strip() for b in blades}
        assert names == ["cb0", "cb1"]
        assert len(ids) == 2  # each boot makes its own machine id
