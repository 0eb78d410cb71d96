"""The libvirt connection, and the KVM probe.

Only this module imports ``libvirt``. Errors come out as HypervisorError with a
hint; libvirt's own default handler (which prints to stderr) is silenced.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from types import TracebackType
from typing import Any

import libvirt
import libvirt_qemu

from . import paths
from .errors import CommandError, HypervisorError
from .runner import run

LOG = logging.getLogger(__name__)

START_HINT = ("start libvirtd: `systemctl start libvirtd`, or without systemd "
              "`virtlogd -d && libvirtd -d` (as root)")

_STATES = {
    libvirt.VIR_DOMAIN_NOSTATE: "nostate",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "blocked",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_SHUTOFF: "shut off",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "suspended",
}
ABSENT = "absent"
METADATA_NS = "https://ddc-testbed.invalid/xmlns/1"  # matches templates/domain.xml.j2


def _quiet(_ctx: Any, _err: Any) -> None:
    """libvirt prints every error to stderr unless a handler is set; we raise instead."""


libvirt.registerErrorHandler(_quiet, None)


class Hypervisor:
    """A libvirt connection, used as a context manager::

        with Hypervisor("qemu:///system") as hv:
            hv.define(xml); hv.start(name, paused=True); hv.resume(name)
    """

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._conn: libvirt.virConnect | None = None

    def __enter__(self) -> Hypervisor:
        self.open()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def open(self) -> None:
        try:
            self._conn = libvirt.open(self.uri)
        except libvirt.libvirtError as exc:
            raise HypervisorError(f"cannot connect to libvirt at {self.uri}: {exc.get_error_message()}",
                                  hint=START_HINT) from exc

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except libvirt.libvirtError:
                pass
            self._conn = None

    @property
    def conn(self) -> libvirt.virConnect:
        if self._conn is None:
            self.open()
        assert self._conn is not None
        return self._conn

    # -- domains ---------------------------------------------------------------------------------

    def _lookup(self, name: str) -> libvirt.virDomain | None:
        try:
            return self.conn.lookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise HypervisorError(f"libvirt lookup of {name}: {exc.get_error_message()}") from exc

    def _domain(self, name: str) -> libvirt.virDomain:
        dom = self._lookup(name)
        if dom is None:
            raise HypervisorError(f"domain {name} does not exist", hint="is the testbed up? see `ddc status`")
        return dom

    def define(self, xml: str) -> None:
        try:
            self.conn.defineXML(xml)
        except libvirt.libvirtError as exc:
            raise HypervisorError(f"libvirt refused the domain: {exc.get_error_message()}",
                                  hint="run `ddc up --dry-run` to see the XML") from exc

    def start(self, name: str, paused: bool = False) -> None:
        flags = libvirt.VIR_DOMAIN_START_PAUSED if paused else 0
        try:
            self._domain(name).createWithFlags(flags)
        except libvirt.libvirtError as exc:
            raise HypervisorError(f"cannot start {name}: {exc.get_error_message()}",
                                  hint="QEMU's own log is in /var/log/libvirt/qemu/" + name + ".log") from exc

    def resume(self, name: str) -> None:
        try:
            self._domain(name).resume()
        except libvirt.libvirtError as exc:
            raise HypervisorError(f"cannot resume {name}: {exc.get_error_message()}") from exc

    def destroy(self, name: str) -> bool:
        """Hard-stop a domain; False if it was not running."""
        dom = self._lookup(name)
        if dom is None or not dom.isActive():
            return False
        try:
            dom.destroy()
        except libvirt.libvirtError as exc:
            if dom.isActive():
                raise HypervisorError(f"cannot stop {name}: {exc.get_error_message()}") from exc
        return True

    def undefine(self, name: str) -> bool:
        dom = self._lookup(name)
        if dom is None:
            return False
        try:
            if dom.isActive():
                dom.destroy()
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
        except libvirt.libvirtError as exc:
            raise HypervisorError(f"cannot undefine {name}: {exc.get_error_message()}") from exc
        return True

    def state(self, name: str) -> str:
        dom = self._lookup(name)
        if dom is None:
            return ABSENT
        return _STATES.get(dom.state()[0], "unknown")

    def domains(self, prefix: str) -> list[str]:
        """Names of all defined or running domains whose name starts with ``prefix``."""
        try:
            return sorted(d.name() for d in self.conn.listAllDomains() if d.name().startswith(prefix))
        except libvirt.libvirtError as exc:
            raise HypervisorError(f"cannot list domains: {exc.get_error_message()}") from exc

    def domains_of(self, testbed: str) -> list[str]:
        """The domains ``up`` made for ``testbed`` (named ``ddc-<testbed>-*``, and
        carrying its metadata, so that testbed ``a`` never claims ``a-b``'s)."""
        return [d for d in self.domains(f"ddc-{testbed}-") if self.testbed_of(d) == testbed]

    def testbed_of(self, name: str) -> str | None:
        """The testbed a domain belongs to, from the metadata ``up`` put in its XML."""
        dom = self._lookup(name)
        if dom is None:
            return None
        try:
            xml = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, METADATA_NS)
        except libvirt.libvirtError:
            return None
        m = re.search(r"testbed=['\"]([^'\"]+)['\"]", xml)
        return m.group(1) if m else None

    def hmp(self, name: str, command: str) -> str:
        """A human-monitor command on a running domain (through libvirt's QMP)."""
        try:
            return str(libvirt_qemu.qemuMonitorCommand(
                self._domain(name), command, libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP))
        except libvirt.libvirtError as exc:
            raise HypervisorError(f"monitor command {command!r} on {name}: {exc.get_error_message()}") from exc

    def qmp(self, name: str, command: str, **arguments: Any) -> Any:
        """A QMP command on a running domain (through libvirt); returns its ``return``."""
        msg = json.dumps({"execute": command, **({"arguments": arguments} if arguments else {})})
        try:
            reply = json.loads(libvirt_qemu.qemuMonitorCommand(self._domain(name), msg, 0))
        except libvirt.libvirtError as exc:
            raise HypervisorError(f"QMP {command} on {name}: {exc.get_error_message()}") from exc
        if "error" in reply:
            raise HypervisorError(f"QMP {command} on {name}: {reply['error'].get('desc', reply['error'])}")
        return reply.get("return")

    def free_root_ports(self, name: str, alias_prefix: str) -> dict[str, tuple[int, int]]:
        """alias -> (slot, function) of the live domain's PCIe root ports whose alias starts with
        ``alias_prefix`` and that libvirt put no device behind."""
        try:
            root = ET.fromstring(self._domain(name).XMLDesc(0))
        except libvirt.libvirtError as exc:
            raise HypervisorError(f"XML of {name}: {exc.get_error_message()}") from exc
        devices = root.find("devices")
        if devices is None:
            return {}
        used = {int(a.get("bus", "0"), 0) for a in devices.iter("address") if a.get("type") == "pci"}
        out = {}
        for ctl in devices.findall("controller"):
            alias, addr = ctl.find("alias"), ctl.find("address")
            if (ctl.get("model") != "pcie-root-port" or alias is None or addr is None
                    or not alias.get("name", "").startswith(alias_prefix) or int(ctl.get("index", "0")) in used):
                continue
            out[alias.get("name", "")] = (int(addr.get("slot", "0"), 0), int(addr.get("function", "0"), 0))
        return out

    def domstats(self, name: str) -> dict[str, Any]:
        """libvirt's statistics of a running domain (cpu.time, vcpu.N.*, balloon.*, block.*, net.*)."""
        try:
            got = self.conn.domainListGetStats([self._domain(name)], 0)
        except libvirt.libvirtError as exc:
            raise HypervisorError(f"domain statistics of {name}: {exc.get_error_message()}") from exc
        return dict(got[0][1]) if got else {}

    def qemu_pid(self, name: str) -> int | None:
        """The QEMU process of a running domain, from libvirt's pid file."""
        pidfile = Path("/run/libvirt/qemu") / f"{name}.pid"
        try:
            return int(pidfile.read_text().strip())
        except (OSError, ValueError):
            return None


# -- KVM probe -----------------------------------------------------------------------------------

PROBE_TIMEOUT = 25.0
# A kernel that gets as far as looking for its root file system has passed
# everything a broken nested KVM hangs on (here: right after "Probing EDD").
_PROBE_MARK = re.compile(r"VFS: Unable to mount root|Kernel panic")


def _probe_key(kernel: Path) -> str:
    qemu = Path("/usr/bin/qemu-system-x86_64")
    qemu_id = f"{qemu.stat().st_size}:{int(qemu.stat().st_mtime)}" if qemu.exists() else "none"
    return f"{platform.node()}|{platform.release()}|{qemu_id}|{kernel.name}"


def kvm_works(kernel: Path, *, refresh: bool = False) -> bool:
    """Whether KVM can boot ``kernel`` here, by trying it once (cached per host).

    The presence of /dev/kvm proves nothing: some nested setups expose a KVM that
    hangs stock kernels. The trial boots the kernel with no root file system and
    waits for it to panic looking for one, which a working KVM does in about a
    second.
    """
    cache = paths.ddc_home() / "kvm-probe.json"
    key = _probe_key(kernel)
    if not refresh:
        try:
            cached = json.loads(cache.read_text())
            if cached.get("key") == key:
                return bool(cached["kvm"])
        except (OSError, ValueError, KeyError):
            pass
    works = _trial_boot(kernel)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"key": key, "kvm": works, "probed_at": time.time()}))
    LOG.info("KVM probe: %s", "KVM boots guests here" if works else "KVM unusable, using TCG")
    return works


def _trial_boot(kernel: Path) -> bool:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    argv = ["qemu-system-x86_64", "-accel", "kvm", "-cpu", "host", "-m", "256", "-nodefaults",
            "-display", "none", "-no-reboot", "-serial", "stdio", "-kernel", str(kernel),
            "-append", "console=ttyS0 panic=-1 root=/dev/ddc-probe-none"]
    try:
        proc = run(argv, check=False, input="", timeout=PROBE_TIMEOUT)
    except CommandError:
        return False  # timed out: the hang this probe exists for
    return bool(_PROBE_MARK.search(proc.stdout or ""))
