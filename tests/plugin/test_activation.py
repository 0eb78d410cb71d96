"""Runtime activation (active=off, activate/deactivate) under qemu-x86_64.

A switch takes effect when a vCPU runs one of the plugin's "kicks".  The
'remote' guest waits in read(2) between commands, and a vCPU inside a
syscall only picks up newly registered callbacks once it returns, so an
activation lands at the guest's next syscall return after that (the write
of its answer) or at a translation.  The tests therefore send the request,
give the guest a command that does nothing ("touch 0 0 64"), read the
reply, and only then run the sweep they count.  A deactivation is made by
the access path itself, at the guest's first access.
"""

from __future__ import annotations

import json
import select
import subprocess
import time
from pathlib import Path
from typing import Any

from .conftest import QEMU_USER, Built, plugin_arg
from .test_plugin import BASE, REMOTE_RANGE, SIZE, blade

OPTS = ["mode=account", "local_ns=100", "blade=mb0:400", REMOTE_RANGE]


def counts(stats: dict[str, Any]) -> tuple[int, int, int, int]:
    t = stats["total"]
    return t["insns"], t["loads"], t["stores"], blade(stats)["accesses"]


def test_bad_active_value_rejected(built: Built) -> None:
    proc = subprocess.run([QEMU_USER, "-plugin", plugin_arg(built.plugin, ["active=maybe"]),
                           "/bin/true"], capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    assert "libddc: active=maybe: use on or off" in proc.stderr


def switched(g: Any, cmd: str) -> dict[str, Any]:
    """Ask for (de)activation and run empty guest commands until the reply
    comes.  The switch needs guest code to run after the control thread has
    read the request; one empty command can end before that on a busy host (a
    CI run then waited for the reply forever), and a longer one can be partly
    run before it."""
    g.ctl.send(cmd)
    for _ in range(100):
        assert g.command("touch 0 0 64").startswith("done")
        if select.select([g.ctl.sock], [], [], 0.05)[0]:
            break
    reply: dict[str, Any] = g.ctl.reply()
    return reply


def test_inactive_counts_nothing_then_activate_deactivate(live_guest: Any) -> None:
    g = live_guest(["active=off", *OPTS], [f"{BASE:x}", str(SIZE)])
    assert g.ctl.ok("config")["active"] is False

    # inactive: the guest runs, nothing is counted
    assert g.command("touch 0 1000 64").startswith("done")
    s = g.ctl.ok("stats")
    assert s["active"] is False and s["active_ns"] == 0
    assert counts(s) == (0, 0, 0, 0)
    assert len(s["vcpus"]) == 1, "vCPU state exists while inactive"

    # activate
    assert switched(g, "activate") == {"ok": True, "active": True}
    assert g.command("touch 0 1000 64").startswith("done")
    s = g.ctl.ok("stats")
    assert s["active"] is True and s["active_ns"] > 0
    insns, loads, _, remote = counts(s)
    assert remote == 1000, "every line of the sweep missed into mb0, once"
    assert insns > 4000 and loads >= 1000
    assert blade(s)["stall_ns"] == 1000 * 300
    assert g.ctl.ok("activate") == {"ok": True, "active": True}, "already active: at once"

    # deactivate: in effect once answered; counters and the modelled clock
    # freeze
    assert switched(g, "deactivate") == {"ok": True, "active": False}
    assert g.command("touch 1000 1000 64").startswith("done")
    frozen = g.ctl.ok("stats")
    assert g.command("touch 2000 1000 64").startswith("done")
    s = g.ctl.ok("stats")
    assert s["active"] is False
    assert counts(s) == counts(frozen)
    assert counts(s)[3] == 1000, "the sweep after deactivate was not counted"
    assert s["total"]["modelled_stall_ns"] == 1000 * 300
    assert s["active_ns"] == frozen["active_ns"]

    # again, with a new thread (a new vCPU) created after two resets
    assert switched(g, "activate")["active"] is True
    assert g.command("thread 3000 500 64").startswith("done")
    s = g.ctl.ok("stats")
    assert len(s["vcpus"]) == 2
    assert blade(s)["accesses"] == 1500
    assert s["vcpus"][1]["loads"] >= 500

    # the final stats file and the socket clean-up survive the resets
    assert g.proc.stdin is not None
    g.proc.stdin.close()
    assert g.proc.wait(timeout=30) == 0
    final = json.loads(g.stats_path.read_text())
    assert final["active"] is True and final["config"]["active"] is True
    assert blade(final)["accesses"] == 1500
    assert not Path(final["config"]["sock"]).exists(), "socket left behind"


def test_wait_false_and_pipelined_requests(live_guest: Any) -> None:
    g = live_guest(["active=off", *OPTS], [f"{BASE:x}", str(SIZE)])
    assert g.command("touch 0 0 64").startswith("done")  # now it waits on stdin
    reply = g.ctl.ok("activate", wait=False)
    assert reply == {"ok": True, "active": False, "pending": True}
    assert "wait must be" in g.ctl("activate", wait=1)["error"]
    assert "unknown key 'now'" in g.ctl("deactivate", now=True)["error"]

    # a request queued behind a waiting one is answered after it, in order
    g.ctl.send("activate")
    g.ctl.send("config")
    other = type(g.ctl)(g.stats_path.parent / "ctl.sock")
    try:
        # served meanwhile (whether the switch is done yet is a race: the
        # guest may still be on its way from its answer to its next read)
        assert other.ok("stats")["active"] in (False, True)
    finally:
        other.close()
    assert g.command("touch 0 100 64").startswith("done")
    assert g.ctl.reply() == {"ok": True, "active": True}
    assert g.ctl.reply()["active"] is True


def test_deactivate_while_guest_is_busy(live_guest: Any) -> None:
    """No syscall during the sweep: the access path itself makes the switch
    (the republished map sends the vCPU through its slow path)."""
    g = live_guest(OPTS, [f"{BASE:x}", str(SIZE)])
    lines, n = SIZE // 64, SIZE // 8
    assert g.proc.stdin is not None and g.proc.stdout is not None
    g.proc.stdin.write(f"touch 0 {n} 8\n")  # 8 reads per line, ~0.1 s or more
    g.proc.stdin.flush()
    deadline = time.monotonic() + 10
    while blade(g.ctl.ok("stats"))["accesses"] == 0:
        assert time.monotonic() < deadline, "the sweep never started"
    g.ctl.send("deactivate")
    assert g.ctl.reply() == {"ok": True, "active": False}
    assert g.proc.stdout.readline().startswith("done")
    s = g.ctl.ok("stats")
    remote = blade(s)["accesses"]
    assert 0 < remote < lines, "switched mid-sweep (if the host is very slow to poll: flaky)"
    frozen = counts(s)
    assert g.command("touch 0 1000 64").startswith("done")
    assert counts(g.ctl.ok("stats")) == frozen


def test_switch_storm_then_exit(live_guest: Any) -> None:
    """Requests faster than switches complete: the last one wins, every
    waiting client hears the final state, and exit stays clean even with a
    switch still pending."""
    g = live_guest(OPTS, [f"{BASE:x}", str(SIZE)])
    assert g.proc.stdin is not None and g.proc.stdout is not None
    g.proc.stdin.write(f"touch 0 {SIZE // 8} 8\n")
    g.proc.stdin.flush()
    for i in range(20):
        reply = g.ctl.ok("deactivate" if i % 2 == 0 else "activate", wait=False)
        assert set(reply) <= {"ok", "active", "pending"}
    g.ctl.send("deactivate")
    assert g.ctl.reply() == {"ok": True, "active": False}
    assert g.proc.stdout.readline().startswith("done")

    # left pending: the guest blocks in read, then exits
    assert g.command("touch 0 0 64").startswith("done")
    assert g.ctl.ok("activate", wait=False)["ok"] is True
    g.proc.stdin.close()
    assert g.proc.wait(timeout=30) == 0
    final = json.loads(g.stats_path.read_text())
    assert final["active"] in (False, True)
    assert not Path(final["config"]["sock"]).exists(), "socket left behind"
