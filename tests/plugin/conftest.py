"""Fixtures for the libddc plugin tests: build the plugin, compile the guest
programs in progs/, and run them under qemu-x86_64 (user mode, no VM).

In user mode QEMU has no physical addresses, so libddc models the guest's
virtual address space; ranges in these tests are virtual.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
PROGS = Path(__file__).resolve().parent / "progs"
QEMU_USER = "qemu-x86_64"


@dataclass(frozen=True)
class Built:
    plugin: Path
    progs: dict[str, Path]


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    if shutil.which(QEMU_USER) is None:
        pytest.skip(f"{QEMU_USER} not installed (apt-get install qemu-user)")
    make = subprocess.run(["make", "-C", str(REPO / "qemu_devices")], capture_output=True, text=True)
    assert make.returncode == 0, f"make -C qemu_devices failed:\n{make.stdout}\n{make.stderr}"
    out = tmp_path_factory.mktemp("progs")
    progs = {}
    for src in sorted(PROGS.glob("*.c")):
        exe = out / src.stem
        cc = subprocess.run(["gcc", "-O2", "-static", "-o", str(exe), str(src)],
                            capture_output=True, text=True)
        assert cc.returncode == 0, f"gcc {src.name} failed:\n{cc.stderr}"
        progs[src.stem] = exe
    return Built(REPO / "qemu_devices" / "build" / "libddc.so", progs)


def plugin_arg(plugin: Path, opts: Sequence[str]) -> str:
    # QEMU splits -plugin at commas; a literal comma inside a value is ",,".
    return ",".join([str(plugin), *(o.replace(",", ",,") for o in opts)])


@dataclass(frozen=True)
class Result:
    proc: subprocess.CompletedProcess[str]
    stats: dict[str, Any]


def run_guest(built: Built, opts: Sequence[str], prog: str, args: Sequence[str], tmp: Path,
              stdin: str = "", timeout: float = 60) -> Result:
    """Run a guest program to completion under the plugin; return its stats= file."""
    stats = tmp / f"stats-{time.monotonic_ns()}.json"
    argv = [QEMU_USER, "-plugin", plugin_arg(built.plugin, [*opts, f"stats={stats}"]),
            str(built.progs[prog]), *args]
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{argv} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return Result(proc, json.loads(stats.read_text()))


class Control:
    """A JSON-lines client of the plugin's control socket."""

    def __init__(self, path: Path, timeout: float = 10) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.rfile = self.sock.makefile("r", encoding="utf-8")

    def raw(self, line: str) -> dict[str, Any]:
        self.sock.sendall(line.encode() + b"\n")
        return self.reply()

    def send(self, cmd: str, **kw: Any) -> None:
        """Send a request without waiting for its reply (activate/deactivate
        answer only once a vCPU has run)."""
        self.sock.sendall(json.dumps({"cmd": cmd, **kw}).encode() + b"\n")

    def reply(self) -> dict[str, Any]:
        reply = self.rfile.readline()
        assert reply.endswith("\n"), "no reply line"
        answer: dict[str, Any] = json.loads(reply)
        return answer

    def __call__(self, cmd: str, **kw: Any) -> dict[str, Any]:
        return self.raw(json.dumps({"cmd": cmd, **kw}))

    def ok(self, cmd: str, **kw: Any) -> dict[str, Any]:
        reply = self(cmd, **kw)
        assert reply.get("ok") is True, f"{cmd} {kw}: {reply}"
        return reply

    def close(self) -> None:
        self.rfile.close()
        self.sock.close()


@dataclass
class LiveGuest:
    proc: subprocess.Popen[str]
    ctl: Control
    stats_path: Path

    def command(self, line: str) -> str:
        """Send one command to the guest program and return its answer line."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        assert answer, f"guest died on {line!r}"
        return answer.strip()


@pytest.fixture
def live_guest(built: Built, tmp_path: Path) -> Iterator[Any]:
    """Factory: start the 'remote' program under the plugin with a control socket."""
    started: list[LiveGuest] = []

    def start(opts: Sequence[str], args: Sequence[str]) -> LiveGuest:
        sock = tmp_path / "ctl.sock"
        stats = tmp_path / "final.json"
        argv = [QEMU_USER, "-plugin",
                plugin_arg(built.plugin, [*opts, f"sock={sock}", f"stats={stats}"]),
                str(built.progs["remote"]), *args]
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        # The plugin binds the socket before the guest's first instruction, so
        # it exists once the guest is blocked reading its stdin; connect
        # as soon as it is there rather than sleeping a fixed time.
        deadline = time.monotonic() + 10
        while True:
            try:
                ctl = Control(sock)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    _, err = proc.communicate()
                    pytest.fail(f"control socket never came up: {argv}\n{err}")
                time.sleep(0.01)
        guest = LiveGuest(proc, ctl, stats)
        started.append(guest)
        return guest

    yield start
    for guest in started:
        guest.ctl.close()
        if guest.proc.poll() is None:
            guest.proc.kill()
        guest.proc.wait()
        for stream in (guest.proc.stdin, guest.proc.stdout, guest.proc.stderr):
            if stream is not None:
                stream.close()
