"""Readiness of a blade (guest.wait_ready's last step), against scripted
replies of systemd in place of a real SSH connection."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator import guest
from orchestrator.errors import GuestError

EP = guest.Endpoint(blade="cb0", port=2222, key=Path("/k"), known_hosts=Path("/kh"))

# `systemctl list-units --failed --plain --no-legend`, as systemd 252 prints it.
FAILED_UNITS = ("redis-server.service loaded failed failed Advanced key-value store\n"
                "ddc-extra.mount      loaded failed failed /data\n")


@dataclass
class Reply:
    stdout: str
    exited: int = 0
    stderr: str = ""


class ScriptedConnection:
    """Answers each command from a table of prefixes; records what was run."""

    def __init__(self, replies: dict[str, str]) -> None:
        self.replies = replies
        self.ran: list[str] = []

    def run(self, command: str, **_: object) -> Reply:
        self.ran.append(command)
        for prefix, out in self.replies.items():
            if prefix in command:
                return Reply(out, exited=0 if out.strip() in guest.READY_STATES else 1)
        raise AssertionError(f"unexpected command {command!r}")


def finished(conn: ScriptedConnection) -> guest.Ready:
    start = time.monotonic()
    return guest.boot_finished(conn, EP, start, start + 60)  # type: ignore[arg-type]


def test_running_is_ready_and_waits_in_the_guest() -> None:
    conn = ScriptedConnection({"is-system-running": "running\n"})
    ready = finished(conn)
    assert (ready.state, ready.failed) == ("running", ())
    # One command that blocks in the guest until boot is over, bounded by the time left.
    assert len(conn.ran) == 1 and "is-system-running --wait" in conn.ran[0]
    assert conn.ran[0].startswith("timeout ") and 55 <= int(conn.ran[0].split()[1]) <= 60


def test_degraded_is_ready_and_names_the_failed_units() -> None:
    conn = ScriptedConnection({"is-system-running": "degraded\n", "--failed": FAILED_UNITS})
    ready = finished(conn)
    assert ready.state == "degraded"
    assert ready.failed == ("redis-server.service", "ddc-extra.mount")


@pytest.mark.parametrize("state", ["starting", "maintenance", ""])
def test_a_boot_that_does_not_finish_is_an_error_naming_the_state(state: str) -> None:
    conn = ScriptedConnection({"is-system-running": state + "\n"})
    with pytest.raises(GuestError) as err:
        finished(conn)
    assert f"systemd says {state or 'unknown'!r}" in str(err.value)
    assert "systemctl list-jobs" in str(err.value)
