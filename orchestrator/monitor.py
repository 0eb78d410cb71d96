"""The rack monitor: watch blades, tell their emergency contacts when one fails.

A blade (compute or memory) can name *emergency contacts*: compute blades to be
told at once when it fails, instead of finding out after a TCP keepalive or a
consensus timeout. ``ddc monitor FILE`` runs on the host and, every
``interval`` (0.1 s by default):

- checks that each compute blade's QEMU process is alive (its heartbeat: a
  blade whose QEMU stopped or crashed has failed; libvirt itself can take
  seconds to report it);
- reads the testbed's event log, the memory blades' heartbeat: a memory blade
  (or one of its regions) has failed when ``ddc fail`` logged it so, which it
  does at the moment of failure, before it injects anything. A pool cannot
  vanish on its own (it is a tmpfs that QEMU maps; the kernel refuses to
  unmount it), so there is nothing else to watch;
- for a new failure, writes one JSON line to ``/run/ddc/events/<blade>`` in each
  contact's guest (``blade``, ``kind``, ``region`` for a region, and the host
  times it ``happened`` and was ``detected``), over an SSH session it keeps
  open, and runs the contact's hook ``/etc/ddc/on-failure BLADE KIND [REGION]``
  if that file is executable. Programs wait on the file (inotify, ``tail -F``)
  or let the hook signal them. A region's failure goes to its memory blade's
  contacts (its owner learns it by SIGBUS).

Each detection and notification is logged in the testbed state with its delays.
Not detected: a guest that hangs while its QEMU runs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shlex
import threading
import time
from collections.abc import Callable
from pathlib import Path

from . import guest, state, testbed
from .errors import DdcError, SpecError
from .hypervisor import Hypervisor
from .state import TestbedState

LOG = logging.getLogger(__name__)
Say = Callable[[str], None]
EVENTS_DIR = "/run/ddc/events"
HOOK = "/etc/ddc/on-failure"


def set_contacts(name: str, blade: str, contacts: list[str]) -> None:
    """Who is told when ``blade`` (a compute or a memory blade) fails."""
    with state.locked(name):
        st = testbed.load_up(name)
        memory = st.memory_blade_nodes()
        if blade not in st.blades and blade not in memory:
            raise SpecError(f"{blade!r} is not a blade of {name}",
                            hint=f"blades: {', '.join([*st.blades, *sorted(memory)])}")
        for c in contacts:
            if c not in st.blades or c == blade:
                raise SpecError(f"--notify: {c!r} is not another compute blade of {name}",
                                hint=f"compute blades: {', '.join(st.blades)}")
        st.contacts[blade] = list(contacts)
        st.log("contacts", blade=blade, contacts=list(contacts))


class Monitor:
    def __init__(self, name: str, interval: float = 0.1, say: Say = LOG.info) -> None:
        self.name = name
        self.interval = interval
        self.say = say
        self.failed: set[str] = set()
        self.failed_regions: set[str] = set()
        self.pids: dict[str, int | None] = {}
        self.shells: dict[str, tuple[guest.Connection, guest.Shell]] = {}

    def run(self, stop: threading.Event | None = None) -> None:
        stop = stop or threading.Event()
        st = testbed.load_up(self.name)
        started = time.time()
        with Hypervisor(st.uri) as hv:
            for blade, rec in st.blades.items():
                if hv.state(rec.domain) != "running":
                    self.failed.add(blade)  # down before we started: not news
                self.pids[blade] = hv.qemu_pid(rec.domain)
            # Sessions to the contacts are opened now: an SSH login costs seconds under TCG.
            for contact in sorted({c for cs in st.contacts.values() for c in cs} - self.failed):
                try:
                    self._shell(st, contact).run("true", timeout=10)  # warm: the guest's bash is up
                except (DdcError, TimeoutError) as exc:
                    self.say(f"cannot reach contact {contact} yet: {exc}")
            self.say(f"watching {', '.join(st.blades)} every {self.interval * 1000:.0f} ms; contacts: "
                     + (", ".join(f"{b} -> {' '.join(c)}" for b, c in st.contacts.items()) or "none"))
            while not stop.wait(self.interval):
                st = state.load(self.name) or st
                now = time.time()
                for blade, rec in st.blades.items():
                    # The heartbeat is the QEMU process itself: libvirt may take
                    # seconds to report a dead domain while it cleans up after it.
                    up = _alive(self.pids.get(blade))
                    if not up:
                        pid = hv.qemu_pid(rec.domain)  # libvirt's pid file: restarted since?
                        if pid != self.pids.get(blade) and _alive(pid):
                            self.pids[blade], up = pid, True
                    if up:
                        self.failed.discard(blade)
                    elif blade not in self.failed:
                        self.failed.add(blade)
                        self._failure(st, blade, "compute blade stopped", now, _since(st, blade, started))
                for e in st.events:
                    if e["time"] <= started:
                        continue
                    if e.get("event") == "memory blade failed" and e["memory_blade"] not in self.failed:
                        self.failed.add(e["memory_blade"])
                        self._failure(st, e["memory_blade"], "memory blade failed", now, e["time"])
                    elif e.get("event") == "region failed" and e["region"] not in self.failed_regions:
                        self.failed_regions.add(e["region"])
                        self._failure(st, e["memory_blade"], "region failed", now, e["time"], region=e["region"])
        for blade in list(self.shells):
            self._drop(blade)

    def _failure(self, st: TestbedState, blade: str, kind: str, detected: float, happened: float | None,
                 region: str | None = None) -> None:
        told = []
        t0 = time.monotonic()
        what = {"region": region} if region else {}
        hook_args = " ".join(shlex.quote(a) for a in (blade, kind, *what.values()))
        for contact in st.contacts.get(blade, []):
            if contact in self.failed:
                continue
            event = json.dumps({"blade": blade, "kind": kind, **what, "happened": happened, "detected": detected})
            # Every program started costs an exec under TCG (100s of ms on a busy
            # host): mkdir runs only the first time, echo is bash's own.
            script = (f"{{ [ -d {EVENTS_DIR} ] || mkdir -p {EVENTS_DIR}; }} && "
                      f"echo {shlex.quote(event)} >> {EVENTS_DIR}/{blade} && "
                      f"{{ [ -x {HOOK} ] && setsid -f {HOOK} {hook_args} </dev/null >/dev/null 2>&1; true; }}")
            try:
                self._shell(st, contact).run(script, timeout=5)
                told.append(contact)
            except (DdcError, TimeoutError, OSError) as exc:
                self._drop(contact)
                self.say(f"could not tell {contact} that {blade} failed: {exc}")
        notified = time.time()
        detect_ms = None if happened is None else (detected - happened) * 1000
        notify_ms = None if happened is None else (notified - happened) * 1000
        (state.load(self.name) or st).log("failure notified", time=notified, blade=blade, kind=kind, **what,
                                          contacts=told, detect_ms=detect_ms, notify_ms=notify_ms)
        since = "" if happened is None else f" {detect_ms:.0f} ms after it happened"
        which = f" ({region})" if region else ""
        self.say(f"{blade}: {kind}{which}; detected{since}; told {', '.join(told) or 'nobody'}"
                 + ("" if notify_ms is None else f" {notify_ms:.0f} ms after it happened")
                 + f" (telling took {(time.monotonic() - t0) * 1000:.0f} ms)")

    def _drop(self, blade: str) -> None:
        pair = self.shells.pop(blade, None)
        for closing in pair or ():
            with contextlib.suppress(Exception):
                closing.close()

    def _shell(self, st: TestbedState, blade: str) -> guest.Shell:
        if blade not in self.shells:
            conn = guest.connect(testbed.endpoint(st, blade))
            self.shells[blade] = (conn, guest.Shell(conn, blade))
        return self.shells[blade][1]


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"  # a zombie is dead, only not yet reaped


def _since(st: TestbedState, blade: str, started: float) -> float | None:
    """When a compute blade's failure happened, if ``ddc fail`` logged it."""
    times = [e["time"] for e in st.events if e.get("event") in ("blade crashed", "blade fenced")
             and e.get("blade") == blade]
    recent = [t for t in times if t > started]
    return max(recent) if recent else None
