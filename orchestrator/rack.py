"""The Rack MMU: memory regions that change owner between compute blades.

A region is a file in a memory blade's pool (the blade's tmpfs, so it counts
against the blade's size), hot-plugged into exactly one compute blade at a time
as an ``ivshmem-plain`` PCI device on one of the blade's empty PCIe root ports.
Inside the guest it is ``/run/ddc/regions/<name>``, a link to the device's BAR
(map it, or use ``ddc-region put|get``). The bytes stay in the host file; moving
a region moves no data.

Operations (each journaled in the testbed state before it acts, with a
timestamped event after every phase, so that a crash half-way leaves a region
``ddc region list`` shows and ``ddc down`` removes):

``attach``  create (or re-attach a detached) region, hot-add it, name it in the guest
``detach``  the owner's guest releases it (refused while a process maps it), hot-remove
``grant``   detach from the owner, attach to another blade: the bytes never move
``steal``   the owner is not asked: it is fenced (its QEMU stopped), then the
            region goes to another blade
``crash``   fail a compute blade (its QEMU stopped at once); its regions are freed
``fail``    fail one region: its owner loses it at once, programs mapping it get SIGBUS

Only the orchestrator changes ownership: a guest has no way to reach a region
that is not plugged into it.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from . import guest, memmap, pools, state, testbed
from .errors import DdcError, GuestError, HypervisorError, SpecError, StateError
from .hypervisor import Hypervisor
from .render import REGION_PORT_PREFIX
from .runner import run
from .spec import check_name, format_size, parse_size
from .state import TestbedState

Say = Callable[[str], None]

GUEST_DIR = "/run/ddc/regions"
DETACH_TIMEOUT = 30.0  # the guest must acknowledge the hot-unplug
ATTACH_TIMEOUT = 30.0  # the guest must see the new device


KINDS = ("shm", "fs")


def _quiet(_msg: str) -> None:
    pass


@dataclass
class Region:
    """One region, as kept in the testbed state (``TestbedState.regions``)."""

    name: str
    memory_blade: str
    size: int
    path: str
    owner: str | None = None  # compute blade, or None when detached
    port: str | None = None  # the root port it is plugged into (a libvirt alias)
    state: str = "detached"  # detached | attaching | attached | releasing | detaching | failing | failed
    created_at: float = 0.0
    kind: str = "shm"  # shm: the raw BAR; fs: an ext4 file system on it, mounted in the guest

    @property
    def qom_id(self) -> str:
        return memmap.region_id(self.name)


def regions(st: TestbedState) -> list[Region]:
    return [Region(**r) for r in st.regions.values()]


def _save(st: TestbedState, reg: Region, event: str, **details: Any) -> None:
    st.regions[reg.name] = reg.__dict__.copy()
    st.log(event, region=reg.name, owner=reg.owner, state=reg.state, **details)


@contextlib.contextmanager
def _phase(timings: dict[str, float], name: str) -> Iterator[None]:
    start = time.monotonic()
    yield
    timings[name] = round(time.monotonic() - start, 4)


# -- the operations ------------------------------------------------------------------------------------

def attach(name: str, blade: str, *, memory_blade: str | None = None, size: str | int | None = None,
           region: str | None = None, kind: str = "shm", say: Say = _quiet) -> tuple[Region, dict[str, float]]:
    """Attach a new region (``memory_blade`` and ``size``) or a detached one (``region``) to ``blade``."""
    timings: dict[str, float] = {}
    with state.locked(name):
        st = testbed.load_up(name)
        testbed.endpoint(st, blade)  # validates the blade
        if region is not None and region in st.regions:
            reg = _usable(Region(**st.regions[region]))
            if reg.owner is not None or reg.state != "detached":
                raise StateError(f"region {region!r} is {reg.state} (owner {reg.owner})",
                                 hint=f"`ddc region detach` it first, or `ddc grant ... --to {blade}`")
        else:
            reg = _new_region(st, region, memory_blade, size, kind)
        with Hypervisor(st.uri) as hv:
            _plug(st, hv, reg, blade, timings, say)
    return reg, timings


def detach(name: str, region: str, *, say: Say = _quiet) -> tuple[Region, dict[str, float]]:
    timings: dict[str, float] = {}
    with state.locked(name):
        st = testbed.load_up(name)
        reg = _usable(_region(st, region))
        if reg.owner is None:
            raise StateError(f"region {region!r} is not attached", hint="`ddc region list` shows the regions")
        with Hypervisor(st.uri) as hv:
            _unplug(st, hv, reg, timings, say)
    return reg, timings


def grant(name: str, region: str, to: str, *, say: Say = _quiet) -> tuple[Region, dict[str, float]]:
    """The owner's guest releases the region, then it is plugged into ``to``: zero-copy."""
    return _move(name, region, to, say, fence=False)


def steal(name: str, region: str, to: str, *, say: Say = _quiet) -> tuple[Region, dict[str, float]]:
    """Give a region to ``to`` without asking its owner: the owner is fenced first
    (its QEMU is stopped, so it cannot write to the region any more), then the
    region is plugged into ``to``. The bytes are those the owner last wrote."""
    return _move(name, region, to, say, fence=True)


def _move(name: str, region: str, to: str, say: Say, *, fence: bool) -> tuple[Region, dict[str, float]]:
    timings: dict[str, float] = {}
    with state.locked(name):
        st = testbed.load_up(name)
        testbed.endpoint(st, to)
        reg = _usable(_region(st, region))
        if reg.owner == to:
            raise StateError(f"region {region!r} already belongs to {to}")
        with Hypervisor(st.uri) as hv:
            if reg.owner is not None and fence:
                with _phase(timings, "fence"):
                    _fence(st, hv, reg.owner, "fenced", say)
                reg = _region(st, region)  # _fence released it
            elif reg.owner is not None:
                _unplug(st, hv, reg, timings, say)
            _plug(st, hv, reg, to, timings, say)
    return reg, timings


def crash(name: str, blade: str, *, say: Say = _quiet) -> None:
    """Fail a compute blade: its QEMU is stopped at once, as a crash would. Its
    regions are released (their bytes stay in the memory blade, ready to steal)."""
    with state.locked(name):
        st = testbed.load_up(name)
        testbed.endpoint(st, blade)
        with Hypervisor(st.uri) as hv:
            _fence(st, hv, blade, "crashed", say)


# HMP `mce`, broadcast to every vCPU (Linux on an Intel CPU waits for all of
# them, and panics if one never enters the handler): bank 9, an uncorrected,
# action-optional memory error (scrub found it) with a valid address; MCG_STATUS
# RIPV|MCIP. Linux takes the page out and, with vm.memory_failure_early_kill=1,
# sends SIGBUS to every process mapping it.
MCE = "mce -b 0 9 0xbd000000000000c0 5 {addr:#x} 0x8c"
MCE_GAP_S = 0.2
# Pages these processes share are spared (init always is): they run the blade
# and its SSH, the orchestrator's way in. A researcher's program is not among them.
SPARED = "-x systemd -x systemd-journal -x systemd-udevd -x systemd-network -x sshd -x bash -x sh"


def fail_memory_blade(name: str, memory_blade: str, *, say: Say = _quiet) -> dict[str, int]:
    """Fail a memory blade: in each compute blade that uses it, every process
    with memory on it gets a machine-check error on one of those pages, so it is
    sent SIGBUS at once (vm.memory_failure_early_kill), and processes on other
    memory go on. One page per process, because machine checks must come one at
    a time. Its regions fail too, each as ``fail_region`` fails one. Returns the
    pages poisoned per compute blade.

    The failure is logged ("memory blade failed") before the first machine
    check: that is the moment it happens, and what ``ddc monitor`` reports to
    the blade's emergency contacts while the machine checks are still going in."""
    poisoned: dict[str, int] = {}
    with state.locked(name):
        st = testbed.load_up(name)
        users = st.memory_blade_nodes().get(memory_blade, {})
        own = [reg for reg in regions(st) if reg.memory_blade == memory_blade and reg.state in ("attached", "detached")]
        if not users and not own:
            raise SpecError(f"no compute blade of {name!r} uses a memory blade {memory_blade!r}",
                            hint="name a memory blade of the testbed file")
        st.log("memory blade failed", memory_blade=memory_blade, users=sorted(users),
               regions=[reg.name for reg in own])
        for reg in own:
            _fail(st, reg, say)
        with Hypervisor(st.uri) as hv:
            for blade, nodes in users.items():
                start = time.monotonic()
                script = "sysctl -qw vm.memory_failure_early_kill=1; " + "; ".join(f"ddc-pages -1 {n} {SPARED}"
                                                                                    for n in nodes)
                addrs = [int(a, 16) for a in _guest(st, blade, script, 120).split()]
                for addr in addrs:
                    hv.hmp(st.blades[blade].domain, MCE.format(addr=addr))
                    # A machine check while the guest still handles the last one
                    # shuts the CPU down: one at a time.
                    time.sleep(MCE_GAP_S)
                poisoned[blade] = len(addrs)
                st.log("machine checks injected", memory_blade=memory_blade, blade=blade, nodes=nodes,
                       pages=len(addrs), seconds=round(time.monotonic() - start, 3))
                say(f"{blade}: node {', '.join(map(str, nodes))} ({memory_blade}) failed; machine-check errors on "
                    f"{len(addrs)} page(s), one per process using it, in {time.monotonic() - start:.1f} s")
    return poisoned


def fail_region(name: str, memory_blade: str, region: str, *,
                say: Say = _quiet) -> tuple[Region, list[int], dict[str, float]]:
    """Fail one region of a memory blade; its other regions and slices go on.

    Its owner loses the region without being asked, and the processes that map
    it get SIGBUS, as the kernel's memory-failure code does for RAM. Machine
    checks cannot do it here: a region is a PCI BAR, not RAM, and the guest
    kernel (Linux 6.1) answers a machine check on a BAR page with "memory
    outside kernel control" and signals nobody. Nor does hot-removal alone: the
    kernel leaves the programs' mappings of the removed BAR in place (tried by
    hand), and their reads then return zeros, silently. So:

    1. freeze: in the owner, the processes mapping the region are stopped
       (SIGSTOP), so that none reads the vanished memory as zeros (an ``fs``
       region's file system is shut down instead: from now on its users get EIO);
    2. remove: the device is hot-removed (the guest kernel ejects it; no
       program is asked) and its memory backend deleted: the owner has lost it;
    3. signal: the frozen processes get SIGBUS, then SIGCONT, so they die of it
       (or run their handler); a program on other memory never notices.

    The region's file is deleted (its bytes are lost; the host gets the memory
    back), and the region stays in ``ddc region list`` as ``failed`` until
    ``ddc down``. Returns the region, the guest pids sent SIGBUS and the phases."""
    with state.locked(name):
        st = testbed.load_up(name)
        reg = _failable(st, memory_blade, region)
        return _fail(st, reg, say)


def _fail(st: TestbedState, reg: Region, say: Say) -> tuple[Region, list[int], dict[str, float]]:
    """fail_region's work, under the testbed's lock."""
    timings: dict[str, float] = {}
    owner, memory_blade = reg.owner, reg.memory_blade
    reg.state = "failing"
    _save(st, reg, "region failed", memory_blade=memory_blade)  # the moment of failure (the monitor reads it)
    pids: list[int] = []
    if owner is not None:
        dom = st.blades[owner].domain
        # One SSH connection for both guest steps: the processes stay stopped
        # only as long as the removal takes, not two SSH logins.
        with _phase(timings, "connect"):
            conn = guest.connect(testbed.endpoint(st, owner))
        try:
            with _phase(timings, "freeze"):
                pids = _guest_freeze(conn, owner, reg)
            with Hypervisor(st.uri) as hv, _phase(timings, "remove"):
                with contextlib.suppress(HypervisorError):  # already gone after an interrupted fail
                    hv.qmp(dom, "device_del", id=reg.qom_id)
                _wait_gone(hv, dom, reg.qom_id)
                with contextlib.suppress(HypervisorError):
                    hv.qmp(dom, "object-del", id=reg.qom_id)
            with _phase(timings, "signal"):
                _guest_signal(conn, owner, reg, pids)
        finally:
            conn.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(reg.path)
    reg.owner, reg.port, reg.state = None, None, "failed"
    _save(st, reg, "failure injected", memory_blade=memory_blade, previous_owner=owner, sigbus=pids,
          **{f"{k}_s": v for k, v in timings.items()})
    if owner is not None:
        with Hypervisor(st.uri) as hv:
            _refresh_map(st, hv, owner, say)
    told = {"shm": f"SIGBUS to pid {' '.join(map(str, pids))}" if pids else "no process mapped it",
            "fs": "its file system was shut down: its users get EIO"}[reg.kind]
    say(f"region {reg.name} of {memory_blade} failed" + (f" under {owner}: {told}" if owner else " (detached)"))
    return reg, pids, timings


def _failable(st: TestbedState, memory_blade: str, region: str) -> Region:
    """The region ``ddc fail FILE MEMORY_BLADE --region REGION`` names, or an
    error that says what to type instead; checked before anything changes."""
    if memory_blade in st.blades:
        raise SpecError(f"--region: {memory_blade} is a compute blade; a region fails on its memory blade",
                        hint=f"`ddc fail FILE MEMORY_BLADE --region {region}`, or `ddc fail FILE {memory_blade}` "
                             "to crash the compute blade")
    known = [m.name for m in testbed.plan(st.spec_file).rack.memory_blades]
    if memory_blade not in known:
        raise SpecError(f"testbed {st.name!r} has no memory blade {memory_blade!r}",
                        hint=f"memory blades: {', '.join(known)}")
    reg = _region(st, region)
    if reg.memory_blade != memory_blade:
        raise SpecError(f"--region: region {region!r} is on memory blade {reg.memory_blade}, not {memory_blade}",
                        hint=f"`ddc fail FILE {reg.memory_blade} --region {region}`")
    if reg.state == "failed":
        raise StateError(f"region {region!r} has already failed", hint="`ddc region list` shows the regions")
    if reg.state not in ("attached", "detached", "failing"):
        raise StateError(f"region {region!r} is {reg.state}: an earlier operation on it was interrupted",
                         hint="`ddc region list` shows it; `ddc down` cleans it")
    return reg


def _usable(reg: Region) -> Region:
    if reg.state in ("failing", "failed"):
        raise StateError(f"region {reg.name!r} has failed: its memory is gone",
                         hint="attach a new region (`ddc region attach FILE BLADE --blade MB --size S`); "
                              "`ddc down` removes the failed one")
    return reg


def _fence(st: TestbedState, hv: Hypervisor, blade: str, why: str, say: Say) -> None:
    st.log(f"blade {why}", blade=blade)
    hv.destroy(st.blades[blade].domain)
    for reg in regions(st):
        if reg.owner == blade:
            reg.owner, reg.port, reg.state = None, None, "detached"
            _save(st, reg, f"owner {why}", previous_owner=blade)
    say(f"compute blade {blade} {why} (QEMU stopped); `ddc restart FILE {blade}` boots it again")


def list_regions(name: str) -> tuple[list[Region], list[dict[str, Any]]]:
    """The regions of a testbed and the log of ownership changes (also when the testbed is half up)."""
    st = state.load(name)
    if st is None:
        raise StateError(f"testbed {name!r} is not up", hint="`ddc up FILE` brings it up")
    return regions(st), list(st.events)


# -- pieces --------------------------------------------------------------------------------------------

def _region(st: TestbedState, region: str) -> Region:
    if region not in st.regions:
        raise SpecError(f"testbed {st.name!r} has no region {region!r}",
                        hint=f"regions: {', '.join(st.regions) or 'none'}; `ddc region attach` makes one")
    return Region(**st.regions[region])


def _new_region(st: TestbedState, region: str | None, memory_blade: str | None,
                size: str | int | None, kind: str = "shm") -> Region:
    if memory_blade is None or size is None:
        raise SpecError("a new region needs --blade (the memory blade) and --size",
                        hint="e.g. `ddc region attach FILE cb0 --blade mb0 --size 256M`")
    try:
        nbytes = parse_size(size)
        name = check_name(region or f"r{len(st.regions)}")
    except ValueError as exc:
        raise SpecError(f"region: {exc}") from exc
    if kind not in KINDS:
        raise SpecError(f"--as: {kind!r} is not a region kind", hint=f"use one of: {', '.join(KINDS)}")
    if nbytes & (nbytes - 1):
        raise SpecError(f"--size: {format_size(nbytes)} is not a power of two; a region is a PCI BAR",
                        hint="use e.g. 64M, 256M or 1G")
    rack = testbed.plan(st.spec_file).rack
    mb = next((m for m in rack.memory_blades if m.name == memory_blade), None)
    if mb is None:
        raise SpecError(f"--blade: testbed {st.name!r} has no memory blade {memory_blade!r}",
                        hint=f"memory blades: {', '.join(m.name for m in rack.memory_blades)}")
    used = sum(p.size for p in mb.slices) + sum(r["size"] for r in st.regions.values()
                                               if r["memory_blade"] == mb.name)
    if used + nbytes > mb.size:
        raise SpecError(f"--size: {format_size(nbytes)} does not fit in memory blade {mb.name}: "
                        f"{format_size(mb.size - used)} of {format_size(mb.size)} is free",
                        hint="use a smaller region, detach and remove others, or give the blade more memory")
    path = mb.pool_dir / f"region-{name}"
    reg = Region(name=name, memory_blade=mb.name, size=nbytes, path=str(path), created_at=time.time(), kind=kind)
    st.record("file", path=path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, nbytes)
    finally:
        os.close(fd)
    if kind == "fs":
        # Made on the host, where e2fsprogs is; the guest only mounts it.
        run(["mkfs.ext4", "-q", "-F", "-L", name[:16], "-E", "root_owner=0:0", str(path)])
    pools.hand_to_qemu(path)
    _save(st, reg, "created", memory_blade=mb.name, size=nbytes)
    return reg


def _free_port(st: TestbedState, hv: Hypervisor, blade: str) -> tuple[str, tuple[int, int]]:
    ports = hv.free_root_ports(st.blades[blade].domain, REGION_PORT_PREFIX)
    taken = {r["port"] for r in st.regions.values() if r["owner"] == blade}
    for alias in sorted(ports):
        if alias not in taken:
            return alias, ports[alias]
    raise StateError(f"{blade} has no free root port for another region ({len(ports)} ports, all used)",
                     hint="detach a region from it first")


def _plug(st: TestbedState, hv: Hypervisor, reg: Region, blade: str, timings: dict[str, float], say: Say) -> None:
    dom = st.blades[blade].domain
    port, (slot, function) = _free_port(st, hv, blade)
    reg.owner, reg.port, reg.state = blade, port, "attaching"
    _save(st, reg, "attaching", port=port)
    with _phase(timings, "attach"):
        hv.qmp(dom, "object-add", **{"qom-type": "memory-backend-file", "id": reg.qom_id,
                                     "mem-path": reg.path, "size": reg.size, "share": True})
        hv.qmp(dom, "device_add", driver="ivshmem-plain", id=reg.qom_id, memdev=reg.qom_id, bus=port)
    with _phase(timings, "map"):
        resource = _guest_map(st, blade, reg, slot, function)
    reg.state = "attached"
    _save(st, reg, "attached", resource=resource, **{f"{k}_s": v for k, v in timings.items()})
    _refresh_map(st, hv, blade, say)
    say(f"region {reg.name} ({format_size(reg.size)} of {reg.memory_blade}) attached to {blade} "
        f"as {GUEST_DIR}/{reg.name}")


def _unplug(st: TestbedState, hv: Hypervisor, reg: Region, timings: dict[str, float], say: Say) -> None:
    assert reg.owner is not None
    owner = reg.owner
    dom = st.blades[owner].domain
    reg.state = "releasing"
    _save(st, reg, "releasing")
    try:
        with _phase(timings, "release"):
            _guest_release(st, owner, reg)
    except StateError as exc:  # in use: nothing changes
        reg.state = "attached"
        _save(st, reg, "release refused", reason=exc.message)
        raise
    reg.state = "detaching"
    _save(st, reg, "detaching")
    with _phase(timings, "detach"):
        with contextlib.suppress(HypervisorError):  # already gone after an earlier, interrupted detach
            hv.qmp(dom, "device_del", id=reg.qom_id)
        _wait_gone(hv, dom, reg.qom_id)
        hv.qmp(dom, "object-del", id=reg.qom_id)
    reg.owner, reg.port, reg.state = None, None, "detached"
    _save(st, reg, "detached", previous_owner=owner, **{f"{k}_s": v for k, v in timings.items()})
    _refresh_map(st, hv, owner, say)
    say(f"region {reg.name} detached from {owner}")


def _refresh_map(st: TestbedState, hv: Hypervisor, blade: str, say: Say) -> None:
    """Give the blade's latency plugin its new address map, so that accesses to
    the regions it now owns count (and are delayed) as accesses to their memory
    blade. The ownership change is done by then: a failure here is logged and
    reported, not raised."""
    try:
        testbed.load_map(hv, st, blade)
    except DdcError as exc:
        st.log("plugin map not refreshed", blade=blade, reason=exc.message)
        say(f"warning: {blade}: the latency plugin's map was not refreshed ({exc.message}); "
            "its accesses to regions are counted as local")


def _wait_gone(hv: Hypervisor, dom: str, qom_id: str) -> None:
    deadline = time.monotonic() + DETACH_TIMEOUT
    while time.monotonic() < deadline:
        names = {p["name"] for p in hv.qmp(dom, "qom-list", path="/machine/peripheral")}
        if qom_id not in names:
            return
        time.sleep(0.05)
    raise GuestError(f"{dom}: the guest did not release device {qom_id} within {DETACH_TIMEOUT:.0f} s",
                     hint="is pciehp loaded in the guest? the region stays attached")


# -- in the guest --------------------------------------------------------------------------------------

def _guest(st: TestbedState, blade: str, script: str, timeout: float) -> str:
    conn = guest.connect(testbed.endpoint(st, blade))
    try:
        return guest.run(conn, script, timeout=timeout, blade=blade).stdout
    finally:
        conn.close()


def _guest_map(st: TestbedState, blade: str, reg: Region, slot: int, function: int) -> str:
    """Wait for the device under its root port, and name it /run/ddc/regions/<name>:
    a link to its BAR (shm), or the mount point of the file system on it (fs: the
    BAR becomes a block device through the kernel's phram and mtdblock)."""
    port_dir = f"/sys/bus/pci/devices/0000:00:{slot:02x}.{function}"
    where = f"{GUEST_DIR}/{reg.name}"
    script = (f"for i in $(seq 1 {int(ATTACH_TIMEOUT * 10)}); do "
              f"r=$(ls -d {port_dir}/0000:*:00.0/resource2 2>/dev/null | head -1); "
              f'[ -n "$r" ] && break; sleep 0.1; done; '
              f'[ -n "$r" ] || {{ echo "no device under {port_dir}" >&2; exit 1; }}; '
              f'r=$(readlink -f "$r"); mkdir -p {GUEST_DIR}; ')
    if reg.kind == "fs":
        # phram names must be unique for the life of the module: one per attach.
        mtd = f"{reg.name}.{int(time.time())}"
        script += (f'start=$(sed -n 3p "$(dirname "$r")/resource" | cut -d" " -f1); '
                   f'spec="{mtd},$start,{reg.size}"; '
                   f'if [ -d /sys/module/phram ]; then echo "$spec" > /sys/module/phram/parameters/phram; '
                   f'else modprobe phram phram="$spec"; fi && modprobe mtdblock && '
                   f'n=$(grep "\"{mtd}\"" /proc/mtd | cut -d: -f1 | tr -dc 0-9) && '
                   f'for i in $(seq 1 50); do [ -b /dev/mtdblock$n ] && break; sleep 0.1; done; '
                   f'mkdir -p {where} && mount -t ext4 /dev/mtdblock$n {where} && echo "/dev/mtdblock$n $r"')
    else:
        script += f'ln -sfn "$r" {where} && echo "$r"'
    return _guest(st, blade, script, ATTACH_TIMEOUT + 15).strip()


def _guest_release(st: TestbedState, blade: str, reg: Region) -> None:
    """Refuse while a process uses the region (maps the BAR, or has files open in
    its file system); then remove its name (unmount: data reaches the region)."""
    where = f"{GUEST_DIR}/{reg.name}"
    if reg.kind == "fs":
        script = (f"mountpoint -q {where} || exit 0; sync; "
                  f'umount {where} 2>/dev/null || {{ echo "in use by pid $(fuser -m {where} 2>/dev/null)" >&2; '
                  f"exit 3; }}; rmdir {where}; grep -q mtdblock /proc/mounts || rmmod mtdblock phram 2>/dev/null; "
                  "true")
    else:
        script = (_users(where) + f'[ -z "$users" ] || {{ echo "in use by pid $users" >&2; exit 3; }}; sync; '
                  f"rm -f {where}")
    try:
        _guest(st, blade, script, 30)
    except GuestError as exc:
        found = re.findall(r"in use by pid ([\d ]*)", exc.message)  # the last: stderr, after the command
        if found:
            who = f"process(es) {found[-1].strip()}" if found[-1].strip() else "a process"
            raise StateError(f"region {reg.name!r} is in use by {who} on {blade}",
                             hint="stop them first (or `ddc steal` takes it without asking)") from exc
        raise


def _users(where: str) -> str:
    """Shell that sets $users to the pids mapping the shm region at ``where`` (exits
    if it has no name): /proc/PID/maps names the canonical sysfs path of its BAR."""
    return (f'r=$(readlink -f {where}) && [ -e "$r" ] || exit 0; '
            f'users=$(grep -lF "$r" /proc/[0-9]*/maps 2>/dev/null | cut -d/ -f3 | tr "\\n" " "); ')


# EXT4_IOC_SHUTDOWN (_IOR('X', 125, __u32)) with EXT4_GOING_FLAGS_NOLOGFLUSH: the
# file system stops at once, as if its disk died, and every later call on it fails with EIO.
_SHUTDOWN = ("python3 -c 'import fcntl, os, struct, sys; "
             "fcntl.ioctl(os.open(sys.argv[1], os.O_RDONLY), 0x8004587D, struct.pack(\"I\", 2))'")


def _guest_freeze(conn: guest.Connection, blade: str, reg: Region) -> list[int]:
    """First step of a region's failure in its owner: stop the processes that map
    it (shm), or shut its file system down (fs). Returns the pids stopped."""
    where = f"{GUEST_DIR}/{reg.name}"
    if reg.kind == "fs":
        script = f"mountpoint -q {where} || exit 0; {_SHUTDOWN} {where}"
    else:
        script = _users(where) + '[ -z "$users" ] || kill -STOP $users 2>/dev/null; echo $users'
    return [int(p) for p in guest.run(conn, script, timeout=30, blade=blade).stdout.split()]


def _guest_signal(conn: guest.Connection, blade: str, reg: Region, pids: list[int]) -> None:
    """Last step, once the device is gone: SIGBUS to the stopped processes (and
    SIGCONT, so that it is delivered), and the region's name is removed."""
    where = f"{GUEST_DIR}/{reg.name}"
    if reg.kind == "fs":
        script = f"umount -l {where} 2>/dev/null; rmdir {where} 2>/dev/null; true"  # its users keep their EIO
    else:
        ids = " ".join(map(str, pids))
        script = (f"kill -BUS {ids} 2>/dev/null; kill -CONT {ids} 2>/dev/null; " if pids else "") + f"rm -f {where}"
    guest.run(conn, script, timeout=30, blade=blade)
