"""Per-testbed state: a directory, a lock, and a journal of what was created.

Every resource is written to the journal *before* it is created, so ``down`` can
always finish the job after a crash or Ctrl-C half-way through ``up``: it walks
the journal backwards and removes whatever of it exists.

Layout under ``paths.state_root()``::

    <name>.lock             flock held by the ddc process working on <name>
    <name>/state.json       this module's TestbedState
    <name>/...              keys, overlays, console logs (owned by the testbed)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import paths
from .errors import StateError


class Phase:
    CREATING = "creating"  # up is running, or crashed half-way
    UP = "up"  # every blade answered SSH
    FAILED = "failed"  # up gave up; down cleans
    DESTROYING = "destroying"


@dataclass
class BladeRecord:
    domain: str
    ssh_port: int
    nodes: list[dict[str, Any]] = field(default_factory=list)  # NUMA layout, for status


@dataclass
class TestbedState:
    __test__ = False  # not a pytest class, despite the name
    name: str
    spec_file: str
    spec_digest: str
    uri: str
    accel: str = ""
    plugin: bool = False  # blades run the latency plugin (TCG and mode != off)
    hit_ns: dict[str, float] = field(default_factory=dict)  # cache level -> modelled hit time
    mode: str = ""  # the plugin's mode (inject, account, paced), "" without the plugin
    dilation: float = 0.0  # paced mode: k on every blade (set at up, measured when the file says auto)
    cpi_ns: float = 0.0  # paced mode: model time of one instruction
    image_dir: str = ""  # the cached image the blades' overlays are based on
    phase: str = Phase.CREATING
    created_at: float = field(default_factory=time.time)
    blades: dict[str, BladeRecord] = field(default_factory=dict)
    # Journal, in creation order: {"kind": ..., plus "path" or "name" (and "uri")}.
    resources: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""
    # The Rack MMU (rack.py): memory regions by name, and every ownership change.
    regions: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    contacts: dict[str, list[str]] = field(default_factory=dict)  # blade -> who is told when it fails (monitor.py)

    @property
    def directory(self) -> Path:
        return testbed_dir(self.name)

    def blade_dir(self, blade: str) -> Path:
        return self.directory / "blades" / blade

    @property
    def run_dir(self) -> Path:
        """Written by QEMU (as libvirt's QEMU user): plugin sockets and final stats."""
        return paths.run_root() / self.name

    def plugin_socket(self, blade: str) -> Path:
        return self.run_dir / f"{blade}.sock"

    def plugin_stats(self, blade: str) -> Path:
        return self.run_dir / f"{blade}.stats.json"

    @property
    def client_key(self) -> Path:
        return self.directory / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.directory / "known_hosts"

    def save(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o711)
        target = self.directory / "state.json"
        tmp = target.with_suffix(".tmp")
        with _saving(self.directory):
            self._keep_others_events(target)
            with open(tmp, "w") as f:
                json.dump(asdict(self), f, indent=2, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)

    def _keep_others_events(self, target: Path) -> None:
        """The event log only grows, and not only under the testbed's lock: ``ddc
        monitor`` logs its notifications while ``ddc fail``, which holds the lock,
        is still injecting the failure. Events on disk that this copy lacks are
        someone else's: they are kept, not overwritten."""
        try:
            on_disk = json.loads(target.read_text()).get("events", [])
        except (OSError, ValueError):
            return
        mine = {json.dumps(e, sort_keys=True) for e in self.events}
        others = [e for e in on_disk if json.dumps(e, sort_keys=True) not in mine]
        if others:
            self.events = sorted(self.events + others, key=lambda e: e["time"])

    def log(self, event: str, **details: Any) -> None:
        """Append a timestamped event (Rack MMU, monitor) and save, durably. A
        ``time`` in ``details`` replaces now."""
        self.events.append({"time": time.time(), "event": event, **details})
        self.save()

    def memory_blade_nodes(self) -> dict[str, dict[str, list[int]]]:
        """memory blade -> compute blade -> the NUMA nodes it backs there."""
        out: dict[str, dict[str, list[int]]] = {}
        for blade, rec in self.blades.items():
            for n in rec.nodes:
                if n.get("memory_blade"):
                    out.setdefault(n["memory_blade"], {}).setdefault(blade, []).append(n["node"])
        return out

    def record(self, kind: str, **what: Any) -> None:
        """Journal a resource, durably, before the caller creates it."""
        entry = {"kind": kind, **{k: str(v) for k, v in what.items()}}
        if entry not in self.resources:
            self.resources.append(entry)
            self.save()


@contextlib.contextmanager
def _saving(directory: Path) -> Iterator[None]:
    """A short, blocking lock around read-merge-write of state.json (the
    testbed's lock is not always held by a writer: see _keep_others_events)."""
    fd = os.open(directory / ".save.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def testbed_dir(name: str) -> Path:
    return paths.state_root() / name


def load(name: str) -> TestbedState | None:
    path = testbed_dir(name) / "state.json"
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StateError(f"state of testbed {name!r} is unreadable: {exc}",
                         hint=f"inspect {path}; `ddc down` on the testbed file removes it") from exc
    raw["blades"] = {k: BladeRecord(**v) for k, v in raw.get("blades", {}).items()}
    return TestbedState(**raw)


def names() -> list[str]:
    root = paths.state_root()
    if not root.is_dir():
        return []
    return sorted(p.parent.name for p in root.glob("*/state.json"))


@contextlib.contextmanager
def locked(name: str, purpose: str = "") -> Iterator[None]:
    """Hold the testbed's lock, or fail at once if another ddc holds it. A
    ``purpose`` is a lock of its own: ``campaign`` is held by ``ddc run`` for its
    whole session, while the testbed's own lock is taken by each change."""
    root = paths.state_root()
    root.mkdir(parents=True, exist_ok=True, mode=0o711)
    path = root / (f"{name}.{purpose}.lock" if purpose else f"{name}.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            doing = f"running a {purpose} on it" if purpose else "working on it"
            raise StateError(f"testbed {name!r} is busy: another ddc process (pid {holder}) is {doing}",
                             hint="wait for it to finish, or stop it; Ctrl-C leaves a state `ddc down` cleans"
                             ) from exc
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
