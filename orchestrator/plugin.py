"""The latency plugin (qemu_devices/libddc.so): build, install, arguments, control.

The plugin is built from ``qemu_devices/`` by its Makefile (against the plugin
header of the installed QEMU) and installed under ``DDC_HOME/plugins/`` with a
content hash in its name, world-readable, because libvirtd runs QEMU as another
user. Its control socket speaks JSON lines (``qemu_devices/README.md``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
from pathlib import Path
from types import TracebackType
from typing import Any

from . import paths
from .errors import DdcError
from .memmap import Range
from .runner import run
from .spec import CacheLevelSpec
from .topology import ComputeBlade, Rack

LOG = logging.getLogger(__name__)

SOURCE = Path(__file__).resolve().parent.parent / "qemu_devices"
BUILT = SOURCE / "build" / "libddc.so"


class PluginError(DdcError):
    """The plugin could not be built, or its control socket said no."""


def library() -> Path:
    """Build the plugin if needed and return its installed, world-readable copy."""
    if not SOURCE.is_dir():
        raise PluginError(f"no plugin sources at {SOURCE}", hint="run ddc from a checkout of ddc-testbed")
    run(["make", "-s", "-C", str(SOURCE)], timeout=900,
        hint="`make -C qemu_devices` builds the plugin; it needs root once to fetch QEMU's plugin header")
    digest = hashlib.sha256(BUILT.read_bytes()).hexdigest()[:12]
    target = paths.ddc_home() / "plugins" / f"libddc-{digest}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(target.parent, 0o755)
        tmp = target.with_suffix(".tmp")
        shutil.copyfile(BUILT, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    return target


def cache_option(levels: tuple[CacheLevelSpec, ...]) -> str:
    if not levels:
        return "none"
    return ";".join(f"{c.name}:{c.size}:{c.ways}:{c.line}:{c.scope.value}:{c.hit_ns:g}" for c in levels)


def plugin_arg(rack: Rack, blade: ComputeBlade, lib: Path, sock: Path, stats: Path) -> str:
    """The value of QEMU's ``-plugin`` for one compute blade. The address map is
    not here: it is only known once QEMU has laid out its RAM (see memmap)."""
    # active=off: the blade boots at plain-TCG speed; `up` activates the model
    # once every blade answers SSH.
    opts = [str(lib), "active=off", f"mode={rack.mode}", f"local_ns={rack.local_latency_ns}"]
    if rack.mode == "paced":
        # auto: free-running (no waits) until `up` has measured k
        k = rack.dilation if isinstance(rack.dilation, float) else 0
        opts += [f"dilation={k:g}", f"cpi_ns={rack.cpi_ns:g}"]
    used = {n.memory_blade for n in blade.remote_nodes}
    for mb in rack.memory_blades:
        if mb.name in used:
            bw = f":{mb.bandwidth_gbps:g}" if mb.bandwidth_gbps else ""
            opts.append(f"blade={mb.name}:{mb.latency_ns}{bw}")
    opts += [f"cache={cache_option(rack.caches)}", f"sock={sock}", f"stats={stats}"]
    for opt in opts[1:]:
        if "," in opt:  # QEMU splits -plugin at commas; our values never need one
            raise PluginError(f"plugin option {opt!r} contains a comma")
    return ",".join(opts)


class Control:
    """A connection to one plugin's control socket::

        with Control(path) as ctl:
            ctl.request("set_link", blade="mb0", latency_ns=400)
    """

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.path = path
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buf = b""

    def __enter__(self) -> Control:
        self.open()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def open(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.path))
        except OSError as exc:
            sock.close()
            raise PluginError(f"cannot reach the plugin at {self.path}: {exc.strerror or exc}",
                              hint="is the blade running under TCG with the plugin? see `ddc status`") from exc
        self._sock = sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def request(self, cmd: str, **fields: Any) -> dict[str, Any]:
        if self._sock is None:
            self.open()
        assert self._sock is not None
        line = json.dumps({"cmd": cmd, **fields}) + "\n"
        try:
            self._sock.sendall(line.encode())
            while b"\n" not in self._buf:
                chunk = self._sock.recv(1 << 16)
                if not chunk:
                    raise PluginError(f"plugin at {self.path} closed the connection during {cmd!r}")
                self._buf += chunk
        except OSError as exc:
            raise PluginError(f"plugin at {self.path}: {cmd!r} failed: {exc}") from exc
        reply_line, self._buf = self._buf.split(b"\n", 1)
        reply: dict[str, Any] = json.loads(reply_line)
        if not reply.get("ok"):
            raise PluginError(f"plugin refused {cmd!r}: {reply.get('error', reply)}")
        return reply

    def set_map(self, ranges: list[Range]) -> None:
        self.request("set_map", ranges=[r.as_json() for r in ranges])

    def stats(self) -> dict[str, Any]:
        return self.request("stats")
