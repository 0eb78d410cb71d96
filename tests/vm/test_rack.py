"""The Rack MMU on a real testbed: regions attached, granted and detached between
two blades, bytes checked from inside the guests."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from orchestrator import state
from orchestrator.hypervisor import Hypervisor
from tests.vm.conftest import ddc, leftovers, make_rack

pytestmark = pytest.mark.vm

NAME = "ddcrack"


@pytest.fixture(scope="module")
def rack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = make_rack(tmp_path_factory.mktemp("rack"), NAME)
    ddc("up", str(path))
    yield path
    ddc("down", str(path), check=False)
    assert leftovers(NAME) == [], f"`ddc down` left {leftovers(NAME)}"


def sh(rack: Path, blade: str, command: str, check: bool = True) -> str:
    return ddc("ssh", str(rack), blade, "--", "sh", "-c", command, check=check).stdout


def regions(rack: Path) -> dict:
    return json.loads(ddc("region", "list", str(rack), "--json").stdout)


def test_grant_moves_the_bytes_without_copying_them(rack: Path, tmp_path: Path) -> None:
    ddc("region", "attach", str(rack), "cb0", "--blade", "mb0", "--size", "64M", "--name", "g1")
    listed = regions(rack)["regions"]
    assert [(r["name"], r["owner"], r["state"], r["size"]) for r in listed] == [("g1", "cb0", "attached", 64 << 20)]
    host_file = Path(listed[0]["path"])
    assert host_file.stat().st_size == 64 << 20
    assert not sh(rack, "cb1", "ls /run/ddc/regions 2>/dev/null; true"), "cb1 does not see cb0's region"

    # 8 MiB of random data, written in cb0 through the region's BAR
    digest = sh(rack, "cb0", "head -c 8388608 /dev/urandom > /tmp/data && ddc-region put g1 < /tmp/data >/dev/null "
                             "&& md5sum < /tmp/data").split()[0]
    inode = host_file.stat().st_ino

    out = ddc("grant", str(rack), "g1", "--to", "cb1")
    assert "granted to cb1" in out.stdout
    listed = regions(rack)
    assert [(r["owner"], r["state"]) for r in listed["regions"]] == [("cb1", "attached")]
    assert host_file.stat().st_ino == inode, "the same host file: nothing was copied"
    assert sh(rack, "cb1", "ddc-region get g1 | md5sum").split()[0] == digest
    assert not sh(rack, "cb0", "ls /run/ddc/regions/ 2>/dev/null; true"), "cb0 lost the region"
    assert "ivshmem" not in sh(rack, "cb0", "cat /proc/iomem; lspci 2>/dev/null", check=False)

    # every ownership change is logged with a timestamp
    events = [(e["event"], e["owner"]) for e in listed["events"]]
    assert events[:3] == [("created", None), ("attaching", "cb0"), ("attached", "cb0")]
    assert events[-1] == ("attached", "cb1") and ("detached", None) in events
    st = state.load(NAME)
    assert st is not None and all(e["time"] > st.created_at for e in st.events)

    ddc("region", "detach", str(rack), "g1")
    assert [(r["owner"], r["state"]) for r in regions(rack)["regions"]] == [(None, "detached")]
    # re-attached to cb0, the bytes are still there
    ddc("region", "attach", str(rack), "cb0", "--name", "g1")
    assert sh(rack, "cb0", "ddc-region get g1 | md5sum").split()[0] == digest


def test_a_mapped_region_is_not_released(rack: Path) -> None:
    ddc("region", "attach", str(rack), "cb1", "--blade", "mb0", "--size", "64M", "--name", "busy")
    sh(rack, "cb1", "setsid -f ddc-region hold busy </dev/null >/dev/null 2>&1")  # keeps the BAR mapped
    proc = ddc("grant", str(rack), "busy", "--to", "cb0", check=False)
    assert proc.returncode != 0 and "is in use by process" in proc.stderr, proc.stderr
    regs = {r["name"]: r for r in regions(rack)["regions"]}
    assert (regs["busy"]["owner"], regs["busy"]["state"]) == ("cb1", "attached"), "nothing changed"
    sh(rack, "cb1", "pkill -x ddc-region")
    ddc("grant", str(rack), "busy", "--to", "cb0")


@pytest.mark.parametrize("size,message", [("100M", "not a power of two"), ("8G", "does not fit"),
                                          ("64X", "not a size")])
def test_bad_regions_are_refused(rack: Path, size: str, message: str) -> None:
    proc = ddc("region", "attach", str(rack), "cb0", "--blade", "mb0", "--size", size, check=False)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr


def test_steal_after_a_crash_and_from_a_live_owner(rack: Path) -> None:
    ddc("region", "attach", str(rack), "cb0", "--blade", "mb0", "--size", "64M", "--name", "s1")
    digest = sh(rack, "cb0", "head -c 1000000 /dev/urandom > /tmp/d && ddc-region put s1 < /tmp/d >/dev/null "
                             "&& md5sum < /tmp/d").split()[0]
    ddc("fail", str(rack), "cb0")
    status = json.loads(ddc("status", str(rack), "--json").stdout)[0]
    assert {b["name"]: b["state"] for b in status["blades"]}["cb0"] != "running"
    owners = {r["name"]: (r["owner"], r["state"]) for r in regions(rack)["regions"]}
    assert owners["s1"] == (None, "detached"), "a crashed owner's regions are free to steal"

    out = ddc("steal", str(rack), "s1", "--to", "cb1")
    assert "stolen for cb1" in out.stdout
    assert sh(rack, "cb1", "ddc-region get s1 | md5sum").split()[0] == digest, "the bytes the owner wrote"

    # from a live owner: it is fenced first
    ddc("restart", str(rack), "cb0")
    out = ddc("steal", str(rack), "s1", "--to", "cb0")
    assert "fence" in out.stdout
    status = json.loads(ddc("status", str(rack), "--json").stdout)[0]
    assert {b["name"]: b["state"] for b in status["blades"]}["cb1"] != "running", "cb1 was fenced"
    assert sh(rack, "cb0", "ddc-region get s1 | md5sum").split()[0] == digest
    events = [e["event"] for e in regions(rack)["events"] if e.get("region") == "s1"]
    assert "owner crashed" in events and "owner fenced" in events
    ddc("restart", str(rack), "cb1")


REDIS = ("redis-server --port 6400 --daemonize yes --dir /run/ddc/regions/aof --appendonly yes "
         "--appendfsync always --save '' && "
         "until redis-cli -p 6400 ping 2>/dev/null | grep -q PONG; do sleep 0.1; done")


def test_redis_comes_back_on_another_blade_by_stealing_its_file_system(rack: Path) -> None:
    n = 2000
    ddc("region", "attach", str(rack), "cb0", "--blade", "mb0", "--size", "256M", "--name", "aof", "--as", "fs")
    assert "/run/ddc/regions/aof ext4" in sh(rack, "cb0", "cat /proc/mounts")
    sh(rack, "cb0", f"{REDIS} && seq 1 {n} | sed 's/.*/SET key:& value:&/' | redis-cli -p 6400 >/dev/null")
    assert sh(rack, "cb0", "redis-cli -p 6400 dbsize").strip() == str(n)

    st = state.load(NAME)
    assert st is not None
    with Hypervisor(st.uri) as hv:
        pid = hv.qemu_pid(st.blades["cb0"].domain)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)  # the blade dies; no goodbye, no unmount
    killed = time.monotonic()
    ddc("steal", str(rack), "aof", "--to", "cb1")
    sh(rack, "cb1", REDIS)
    serving = time.monotonic() - killed
    assert sh(rack, "cb1", "redis-cli -p 6400 dbsize").strip() == str(n), "every acknowledged write survived"
    assert sh(rack, "cb1", "redis-cli -p 6400 get key:1234").strip() == "value:1234"
    print(f"kill -> redis serving {n} keys on cb1: {serving:.1f} s")
    sh(rack, "cb1", "redis-cli -p 6400 shutdown nosave; true")
    ddc("restart", str(rack), "cb0")


HOLD = ("setsid -f sh -c 'numactl --membind={n} ddc-ptrchase -s 16M -n 100000000 -r 1000 >/dev/null 2>&1; "
        "echo $? > /tmp/rc{n}' </dev/null >/dev/null 2>&1")


def test_a_failed_memory_blade_signals_only_the_programs_on_it(rack: Path) -> None:
    # A region of mb0 (on the other blade) goes down with it.
    ddc("region", "attach", str(rack), "cb1", "--blade", "mb0", "--size", "64M", "--name", "mr")
    sh(rack, "cb0", "rm -f /tmp/rc0 /tmp/rc1; " + HOLD.format(n=0) + "; " + HOLD.format(n=1) + "; sleep 3")
    assert len(sh(rack, "cb0", "pgrep -x ddc-ptrchase").split()) == 2
    out = ddc("fail", str(rack), "mb0")
    assert "machine-check errors" in out.stderr
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not sh(rack, "cb0", "cat /tmp/rc1 2>/dev/null; true").strip():
        time.sleep(0.5)
    assert sh(rack, "cb0", "cat /tmp/rc1").strip() == "135", "killed by SIGBUS (128 + 7)"
    assert len(sh(rack, "cb0", "pgrep -x ddc-ptrchase").split()) == 1, "the program on node 0 goes on"
    assert not sh(rack, "cb0", "cat /tmp/rc0 2>/dev/null; true").strip()
    assert "Sending SIGBUS to ddc-ptrchase" in sh(rack, "cb0", "dmesg")
    events = regions(rack)["events"]
    assert any(e["event"] == "memory blade failed" and e["memory_blade"] == "mb0" for e in events)
    assert any(e["event"] == "machine checks injected" and e["blade"] == "cb0" and e["pages"] >= 1 for e in events)
    regs = {r["name"]: r for r in regions(rack)["regions"]}
    assert (regs["mr"]["owner"], regs["mr"]["state"]) == (None, "failed")
    assert not sh(rack, "cb1", "ls /run/ddc/regions/mr 2>/dev/null; true").strip()
    sh(rack, "cb0", "pkill -x ddc-ptrchase; true")


@contextlib.contextmanager
def monitoring(rack: Path, blade: str) -> Iterator[Callable[[], str]]:
    """``blade``'s failures told to cb1 (whose hook appends its arguments to
    /tmp/hook-ran), and ``ddc monitor`` running for the ``with`` block; yields
    a function that returns the monitor's next line (and prints it)."""
    ddc("contacts", str(rack), blade, "--notify", "cb1")
    sh(rack, "cb1", "rm -rf /run/ddc/events; mkdir -p /etc/ddc; "
                    "printf '#!/bin/sh\\necho \"$*\" >> /tmp/hook-ran\\n' > /etc/ddc/on-failure; "
                    "chmod +x /etc/ddc/on-failure; rm -f /tmp/hook-ran")
    mon = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "monitor", str(rack)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert mon.stdout is not None
    out = mon.stdout

    def next_line() -> str:
        line = out.readline()
        print(line.strip())
        return line

    try:
        first = out.readline()
        assert "watching" in first and f"{blade} -> cb1" in first, first
        yield next_line
    finally:
        mon.send_signal(signal.SIGTERM)
        mon.wait(timeout=30)


def test_the_monitor_tells_emergency_contacts_within_a_second(rack: Path) -> None:
    with monitoring(rack, "cb0") as next_line:
        st = state.load(NAME)
        assert st is not None
        with Hypervisor(st.uri) as hv:
            pid = hv.qemu_pid(st.blades["cb0"].domain)
        assert pid is not None
        killed = time.time()
        os.kill(pid, signal.SIGKILL)
        line = next_line()
        assert "cb0: compute blade stopped" in line and "told cb1" in line, line
    event = json.loads(sh(rack, "cb1", "cat /run/ddc/events/cb0").splitlines()[-1])
    assert event["blade"] == "cb0"
    detected = event["detected"] - killed
    notified = [e for e in regions(rack)["events"] if e["event"] == "failure notified"][-1]["time"] - killed
    print(f"cb0 killed -> detected {detected * 1000:.0f} ms, cb1 notified {notified * 1000:.0f} ms")
    assert 0 < detected < notified < 1.0, "under a second from failure to notification"
    assert sh(rack, "cb1", "cat /tmp/hook-ran").strip() == "cb0 compute blade stopped", "the hook ran"
    ddc("restart", str(rack), "cb0")


# Checks a pattern over and over in 256 KiB of a region (or of plain memory: "-"),
# and writes how many checks passed; exits 3 on wrong data: a failure it missed.
CHECK = """
import mmap, os, sys, time
path, out = sys.argv[1], sys.argv[2]
size = 256 << 10
mem = mmap.mmap(-1, size) if path == "-" else mmap.mmap(os.open(path, os.O_RDWR | os.O_SYNC), size)
pattern = os.urandom(4096) * (size // 4096)
mem[:] = pattern
n = 0
while True:
    if mem[:] != pattern:
        sys.exit(3)
    n += 1
    with open(out + ".tmp", "w") as f:
        f.write(str(n))
    os.replace(out + ".tmp", out)
    time.sleep(0.05)
"""
CHECKER = ("setsid -f sh -c 'python3 /tmp/check.py {path} /tmp/n-{tag}; echo $? > /tmp/rc-{tag}' "
           "</dev/null >/dev/null 2>&1")


def counts(rack: Path, *tags: str) -> dict[str, int]:
    out = sh(rack, "cb0", " ".join(f"echo {t} $(cat /tmp/n-{t} 2>/dev/null || echo 0);" for t in tags))
    return {t: int(n) for t, n in (line.split() for line in out.splitlines())}


def test_region_fail_signals_only_the_programs_that_map_it(rack: Path) -> None:
    for r in ("fA", "fB"):
        ddc("region", "attach", str(rack), "cb0", "--blade", "mb0", "--size", "64M", "--name", r)
    sh(rack, "cb0", f"printf %s {shlex.quote(CHECK)} > /tmp/check.py; rm -f /tmp/n-* /tmp/rc-*; "
                    + "; ".join(CHECKER.format(path=p, tag=t) for p, t in
                                (("/run/ddc/regions/fA", "A"), ("/run/ddc/regions/fB", "B"), ("-", "plain"))))
    deadline = time.monotonic() + 60
    while min(counts(rack, "A", "B", "plain").values()) == 0:
        assert time.monotonic() < deadline, "the three programs did not start"
        time.sleep(0.5)

    out = ddc("fail", str(rack), "mb0", "--region", "fA")
    assert "region fA: failed" in out.stdout and "SIGBUS to pid" in out.stderr, out.stderr
    deadline = time.monotonic() + 20
    while not sh(rack, "cb0", "cat /tmp/rc-A 2>/dev/null; true").strip():
        assert time.monotonic() < deadline, "the program on fA was not stopped"
        time.sleep(0.5)
    assert sh(rack, "cb0", "cat /tmp/rc-A").strip() == "135", "killed by SIGBUS (128 + 7), not by wrong data (3)"

    # the program on region fB (same memory blade) and the one on plain memory go on, reading the right bytes
    before = counts(rack, "B", "plain")
    time.sleep(3)
    after = counts(rack, "B", "plain")
    assert all(after[t] > before[t] for t in before), (before, after)
    assert not sh(rack, "cb0", "cat /tmp/rc-B /tmp/rc-plain 2>/dev/null; true").strip(), "neither exited"
    assert sh(rack, "cb0", "ls /run/ddc/regions").split() == ["fB"]

    listed = {r["name"]: r for r in regions(rack)["regions"]}
    assert (listed["fA"]["owner"], listed["fA"]["state"]) == (None, "failed")
    assert (listed["fB"]["owner"], listed["fB"]["state"]) == ("cb0", "attached")
    assert not Path(listed["fA"]["path"]).exists() and Path(listed["fB"]["path"]).exists()
    events = [e for e in regions(rack)["events"] if e.get("region") == "fA"]
    assert [e["event"] for e in events[-2:]] == ["region failed", "failure injected"]
    assert events[-1]["previous_owner"] == "cb0" and len(events[-1]["sigbus"]) == 1

    proc = ddc("grant", str(rack), "fA", "--to", "cb1", check=False)
    assert proc.returncode != 0 and "has failed: its memory is gone" in proc.stderr, proc.stderr
    sh(rack, "cb0", "pkill -f '/tmp/[c]heck.py'; sleep 1; true")  # [c]: not this shell
    ddc("region", "detach", str(rack), "fB")


def test_the_monitor_tells_a_memory_blades_contacts_within_a_second(rack: Path) -> None:
    ddc("region", "attach", str(rack), "cb0", "--blade", "mb0", "--size", "64M", "--name", "fm")
    launched = {}
    with monitoring(rack, "mb0") as next_line:
        # One region first, then the whole blade (which fails its remaining regions too).
        launched["region"] = time.time()
        ddc("fail", str(rack), "mb0", "--region", "fm")
        line = next_line()
        assert "mb0: region failed (fm)" in line and "told cb1" in line, line
        launched["blade"] = time.time()
        ddc("fail", str(rack), "mb0")
        line = next_line()
        assert "mb0: memory blade failed" in line and "told cb1" in line, line

    told = [json.loads(x) for x in sh(rack, "cb1", "cat /run/ddc/events/mb0").splitlines()]
    assert [(e["blade"], e["kind"], e.get("region")) for e in told[:2]] == [
        ("mb0", "region failed", "fm"), ("mb0", "memory blade failed", None)]
    assert all(e["kind"] == "region failed" for e in told[2:]), "then the regions the blade took down"
    events = regions(rack)["events"]

    def first(items: list[dict], **match: object) -> dict:
        return next(e for e in items if all(e.get(k) == v for k, v in match.items()))

    for what, happened_event, event in (
            ("region", first(events, event="region failed", region="fm"), told[0]),
            ("blade", [e for e in events if e["event"] == "memory blade failed"][-1], told[1])):
        happened = happened_event["time"]
        notified = first([e for e in events if e["time"] >= happened], event="failure notified",
                         kind=event["kind"])["time"]
        # the fail command logs the failure when it starts, before it injects anything
        assert launched[what] < happened == event["happened"]
        print(f"mb0 {what} failed -> detected {(event['detected'] - happened) * 1000:.0f} ms, cb1 notified "
              f"{(notified - happened) * 1000:.0f} ms (from the launch of `ddc fail`: "
              f"{(notified - launched[what]) * 1000:.0f} ms)")
        assert 0 < event["detected"] - happened < notified - happened < 1.0, "under a second to notification"
    assert sh(rack, "cb1", "cat /tmp/hook-ran").splitlines()[:2] == ["mb0 region failed fm", "mb0 memory blade failed"]


def test_accesses_to_a_region_count_on_its_memory_blade(rack: Path) -> None:
    # The latency plugin learns a region's range when it is plugged (and forgets
    # it when it goes): 32 MiB written through the BAR is 524288 lines, each a
    # miss of every cache level that reaches mb0, so it is counted (and, in
    # inject mode, delayed) as remote memory of mb0.
    from orchestrator import plugin

    st = state.load(NAME)
    assert st is not None and st.plugin
    lines = (32 << 20) // 64

    def written_lines(blade: str) -> int:
        with plugin.Control(st.plugin_socket(blade)) as ctl:
            ctl.request("reset")
            sh(rack, blade, "head -c 33554432 /dev/zero | ddc-region put pm >/dev/null")
            return sum(b["accesses"] for b in ctl.stats()["blades"] if b["name"] == "mb0")

    def region_ranges(blade: str) -> int:
        with plugin.Control(st.plugin_socket(blade)) as ctl:
            return len(ctl.request("config")["ranges"])

    before = {b: region_ranges(b) for b in ("cb0", "cb1")}  # earlier tests may have left regions
    ddc("region", "attach", str(rack), "cb0", "--blade", "mb0", "--size", "64M", "--name", "pm")
    try:
        assert region_ranges("cb0") == before["cb0"] + 1
        assert 0.95 * lines <= written_lines("cb0") <= 1.2 * lines
        ddc("grant", str(rack), "pm", "--to", "cb1")
        assert (region_ranges("cb0"), region_ranges("cb1")) == (before["cb0"], before["cb1"] + 1)
        assert 0.95 * lines <= written_lines("cb1") <= 1.2 * lines
    finally:
        ddc("region", "detach", str(rack), "pm", check=False)
    assert region_ranges("cb1") == before["cb1"]
    # Blocks came and went: the plugin's memo of host page -> physical address
    # was emptied with each new map, and its checks found no stale entry.
    for blade in ("cb0", "cb1"):
        with plugin.Control(st.plugin_socket(blade)) as ctl:
            config = ctl.request("config")
        assert config["hw_memo"] is True and config["hw_mismatches"] == 0, (blade, config)
