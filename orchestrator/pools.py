"""Memory-blade pools on the host.

A pool is a tmpfs mount sized to its memory blade (the kernel enforces the
quota), holding one file per slice, mode 0600 and owned by the user libvirtd runs
QEMU as: libvirt relabels only what the domain XML names, and slices reach QEMU
through ``<qemu:commandline>``.
"""

from __future__ import annotations

import logging
import os
import pwd
import re
from pathlib import Path

from .errors import DdcError
from .runner import run
from .topology import MemoryBlade, Slice

LOG = logging.getLogger(__name__)

QEMU_CONF = Path("/etc/libvirt/qemu.conf")


def qemu_user() -> tuple[int, int]:
    """uid and gid of the user libvirtd (system) runs QEMU as."""
    name = "libvirt-qemu"
    try:
        m = re.search(r'^\s*user\s*=\s*"([^"]+)"', QEMU_CONF.read_text(), re.MULTILINE)
        if m:
            name = m.group(1).lstrip("+")
    except OSError:
        pass
    if name.isdigit():
        return int(name), int(name)
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return 0, 0  # no such user: QEMU runs as root (e.g. qemu:///session as root)
    return entry.pw_uid, entry.pw_gid


def hand_to_qemu(path: Path, mode: int = 0o600) -> None:
    """Give a root-made file (or directory) to QEMU's user, and to nobody else."""
    uid, gid = qemu_user()
    os.chown(path, uid, gid)
    os.chmod(path, mode)


def is_mounted(path: Path) -> bool:
    target = str(path.resolve()) if path.exists() else str(path)
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == target for line in f)


def create_pool(blade: MemoryBlade) -> None:
    """Mount the blade's quota'd tmpfs (idempotent)."""
    blade.pool_dir.mkdir(parents=True, exist_ok=True, mode=0o711)
    os.chmod(blade.pool_dir.parent, 0o711)
    if not is_mounted(blade.pool_dir):
        run(["mount", "-t", "tmpfs", "-o", f"size={blade.size},mode=0711,nr_inodes=1k",
             f"ddc-{blade.name}", str(blade.pool_dir)],
            hint="memory-blade pools are tmpfs mounts: run ddc as root")


def create_slice(piece: Slice) -> None:
    """A sparse slice file of exactly the slice's size; pages come on first touch."""
    fd = os.open(piece.path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.ftruncate(fd, piece.size)
    finally:
        os.close(fd)
    hand_to_qemu(piece.path)


def remove_pool(pool_dir: Path) -> None:
    if is_mounted(pool_dir):
        run(["umount", str(pool_dir)], hint="a QEMU process still maps the pool: `ddc down` stops it first")
    try:
        pool_dir.rmdir()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise DdcError(f"cannot remove pool directory {pool_dir}: {exc.strerror}") from exc


def shm_free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize
