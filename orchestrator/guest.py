"""SSH into blades (fabric/paramiko): readiness, pinned host keys, remote commands.

Blades are reached on 127.0.0.1 through QEMU port forwards. Each blade's host
key was made by the host and is pinned in the testbed's known_hosts; an unknown
or changed key is refused (paramiko RejectPolicy), never added.
"""

from __future__ import annotations

import logging
import selectors
import shlex
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paramiko
from fabric import Connection
from invoke.exceptions import CommandTimedOut, UnexpectedExit

from .errors import GuestError

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class Endpoint:
    blade: str
    port: int
    key: Path
    known_hosts: Path
    host: str = "127.0.0.1"
    user: str = "root"

    def __str__(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    def ssh_argv(self, *command: str, tty: bool = False) -> list[str]:
        """argv for the OpenSSH client, with the same pinning as our own connections."""
        argv = ["ssh", "-i", str(self.key), "-p", str(self.port),
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes",
                "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR"]
        argv += ["-t"] if tty else []
        argv.append(f"{self.user}@{self.host}")
        if command:
            argv += ["--", shlex.join(command)]
        return argv


def connect(ep: Endpoint, timeout: float = 10.0) -> Connection:
    """An open fabric Connection to a blade, host key pinned."""
    conn = Connection(ep.host, user=ep.user, port=ep.port, connect_timeout=timeout,
                      connect_kwargs={"key_filename": str(ep.key), "look_for_keys": False,
                                      "allow_agent": False, "banner_timeout": timeout,
                                      "auth_timeout": timeout})
    # fabric's own client trusts on first use and reads ~/.ssh/known_hosts; ours
    # knows only the testbed's pinned keys and refuses anything else.
    client = paramiko.SSHClient()
    client.load_host_keys(str(ep.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    conn.client = client
    try:
        conn.open()
    except paramiko.BadHostKeyException as exc:
        conn.close()
        raise GuestError(f"{ep.blade}: host key at {ep} does not match the pinned one",
                         hint="another machine answers on that port; `ddc down` then `ddc up`") from exc
    except (paramiko.SSHException, OSError) as exc:
        conn.close()
        raise GuestError(f"{ep.blade}: cannot log in at {ep}: {exc}") from exc
    return conn


def wait_banner(ep: Endpoint, deadline: float, alive: Callable[[], bool] | None = None,
                every: float = 0.25, patience: float = 3.0) -> bool:
    """Wait until sshd itself sends its banner; False at the deadline.

    QEMU's user-mode forward accepts on the host at once, then retries reaching
    the guest with a growing back-off, so one connection held open can see the
    banner seconds late. A new attempt starts every ``every`` seconds and older
    ones stay open for ``patience`` seconds; the first "SSH-" wins.
    """
    sel = selectors.DefaultSelector()
    started: dict[socket.socket, float] = {}
    next_try = 0.0
    try:
        while (now := time.monotonic()) < deadline:
            if alive is not None and not alive():
                return False
            if now >= next_try:
                next_try = now + every
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setblocking(False)
                s.connect_ex((ep.host, ep.port))
                sel.register(s, selectors.EVENT_READ)
                started[s] = now
            for key, _ in sel.select(timeout=max(0.0, min(next_try, deadline) - time.monotonic())):
                s = key.fileobj  # type: ignore[assignment]
                try:
                    data = s.recv(8)
                except OSError:
                    data = b""
                if data.startswith(b"SSH-"):
                    return True
                sel.unregister(s)
                s.close()
                del started[s]
            for s, t in list(started.items()):
                if time.monotonic() - t > patience:
                    sel.unregister(s)
                    s.close()
                    del started[s]
        return False
    finally:
        for s in started:
            s.close()
        sel.close()


@dataclass(frozen=True)
class Ready:
    """A blade whose boot has finished: ``state`` is systemd's ``running`` or
    ``degraded``; ``failed`` names the failed units of a degraded one."""

    seconds: float
    state: str
    failed: tuple[str, ...] = ()


# Boot states after which nothing more starts by itself (systemctl(1),
# is-system-running): the blade is ready, if degraded with failed units.
READY_STATES = ("running", "degraded")


def wait_ready(ep: Endpoint, timeout: float, alive: Callable[[], bool] | None = None,
               poll: float = 0.2) -> Ready:
    """Wait until the blade accepts our login and its boot has finished.

    sshd starts early in boot (the image orders it before sysinit's other
    jobs), so a login alone does not mean the blade is ready: boot jobs still
    run after it, among them systemd-tmpfiles-setup, which empties /tmp
    (`D /tmp` in tmpfiles.d, run with --remove at boot) and so deleted files a
    user wrote right after `up`. One login then waits in the guest with
    `systemctl is-system-running --wait`, which returns as soon as the boot
    transaction is done: no polling. ``alive`` is asked between attempts so
    that a blade that died fails at once instead of at the timeout.
    """
    start = time.monotonic()
    deadline = start + timeout
    last_error = "no SSH banner yet"
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise GuestError(f"{ep.blade}: the blade stopped while booting")
        if wait_banner(ep, deadline, alive):
            try:
                conn = connect(ep, timeout=max(1.0, deadline - time.monotonic()))
            except GuestError as exc:
                last_error = str(exc)
                time.sleep(poll)
                continue
            try:
                return boot_finished(conn, ep, start, deadline)
            finally:
                conn.close()
        time.sleep(poll)
    raise GuestError(f"{ep.blade}: no SSH login at {ep} within {timeout:.0f} s ({last_error})")


def boot_finished(conn: Connection, ep: Endpoint, start: float, deadline: float) -> Ready:
    """Wait in the guest (one command) until systemd's boot transaction is over,
    at most until ``deadline``; a state other than running or degraded then is
    an error."""
    left = max(1, int(deadline - time.monotonic()))
    res = run(conn, f"timeout {left} systemctl is-system-running --wait", timeout=left + 10, check=False,
              blade=ep.blade)
    state = res.stdout.strip() or "unknown"
    if state not in READY_STATES:
        raise GuestError(f"{ep.blade}: boot did not finish within the {deadline - start:.0f} s allowed "
                         f"(systemd says {state!r})",
                         hint=f"`ddc ssh FILE {ep.blade} -- systemctl list-jobs` shows what is still starting")
    failed: tuple[str, ...] = ()
    if state == "degraded":
        units = run(conn, "systemctl list-units --failed --plain --no-legend", check=False, blade=ep.blade)
        failed = tuple(line.split()[0] for line in units.stdout.splitlines() if line.strip())
    return Ready(time.monotonic() - start, state, failed)


@dataclass(frozen=True)
class Result:
    command: str
    exit_code: int
    stdout: str
    stderr: str
    seconds: float


def run(conn: Connection, command: str, *, timeout: float | None = None, check: bool = True,
        blade: str = "") -> Result:
    """Run a shell command on a blade. On failure the error carries the command,
    exit code and the last lines of stdout and stderr (invoke's UnexpectedExit shape)."""
    start = time.monotonic()
    try:
        res = conn.run(command, hide=True, warn=not check, timeout=timeout, in_stream=False)
    except CommandTimedOut as exc:
        raise GuestError(f"{blade}: `{command}` timed out after {timeout} s") from exc
    except UnexpectedExit as exc:
        r = exc.result
        raise GuestError(_failure(blade, command, r.exited, r.stdout, r.stderr)) from exc
    except (paramiko.SSHException, OSError, EOFError) as exc:
        raise GuestError(f"{blade}: `{command}`: connection lost: {exc}") from exc
    return Result(command, res.exited, res.stdout, res.stderr, time.monotonic() - start)


def _failure(blade: str, command: str, code: int, stdout: str, stderr: str) -> str:
    lines = [f"{blade}: `{command}` exited with {code}"]
    for name, text in (("stdout", stdout), ("stderr", stderr)):
        tail = text.strip().splitlines()[-10:]
        if tail:
            lines.append(f"  last {name}:")
            lines += [f"    {t}" for t in tail]
    return "\n".join(lines)


class Shell:
    """One long-lived ``bash`` in a blade, fed scripts over one SSH channel.

    A campaign runs three steps per run; as separate SSH commands each costs a
    new sshd session and shell, a quarter of a second under TCG. Here each
    script is ``eval``'d in a subshell of the same bash (a fork, no exec), so a
    syntax error or an ``exit`` in it cannot end the session, and its output
    (stdout and stderr together) ends at a marker line carrying its exit code.
    """

    def __init__(self, conn: Connection, blade: str = "", prelude: str = "") -> None:
        """``prelude`` runs in the long-lived bash itself (not a subshell): for
        ``enable``, functions and variables every later script sees."""
        self.blade = blade
        transport = conn.client.get_transport()
        if transport is None or not transport.is_active():
            raise GuestError(f"{blade}: the SSH connection is closed")
        self.chan = transport.open_session()
        self.chan.exec_command("exec bash --noprofile --norc -s 2>&1")
        self._buf = b""
        self._n = 0
        if prelude:
            self.chan.sendall((prelude.rstrip("\n") + "\n").encode())

    def close(self) -> None:
        self.chan.close()

    def run(self, script: str, timeout: float) -> tuple[int, str]:
        """(exit code, output). Raises TimeoutError past ``timeout``, GuestError if the channel dies."""
        self._n += 1
        token = f"@@ddc-shell-{self._n}-{time.monotonic_ns()}"
        line = f"( eval {shlex.quote(script)} ) </dev/null 2>&1; rc=$?; echo; echo \"{token} $rc\"\n"
        try:
            self.chan.sendall(line.encode())
        except (OSError, paramiko.SSHException) as exc:
            raise GuestError(f"{self.blade}: shell lost: {exc}") from exc
        needle = f"\n{token} ".encode()
        deadline = time.monotonic() + timeout
        while needle not in self._buf or not self._buf.split(needle, 1)[1].count(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.blade}: no answer within {timeout:g} s")
            self.chan.settimeout(min(left, 1.0))
            try:
                chunk = self.chan.recv(1 << 16)
            except TimeoutError:  # socket.timeout
                continue
            except (OSError, paramiko.SSHException) as exc:
                raise GuestError(f"{self.blade}: shell lost: {exc}") from exc
            if not chunk:
                raise GuestError(f"{self.blade}: shell closed (the blade stopped or sshd died)")
            self._buf += chunk
        out, rest = self._buf.split(needle, 1)
        code, self._buf = rest.split(b"\n", 1)
        return int(code), out.decode(errors="replace")  # the echoed newline went with the marker
