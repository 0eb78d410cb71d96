"""libddc under qemu-x86_64 (user mode): options, cache model, latency
accounting and injection, and the control socket.  No VM needed."""

from __future__ import annotations

import json
import select
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import QEMU_USER, Built, plugin_arg, run_guest

# Small levels keep the sweeps short; the default is 32K/1M/16M.
CACHE = "l1d:4K:4:64:private;l2:32K:8:64:private;llc:256K:16:64:shared"
CAPACITY = {"l1d": 4 << 10, "l2": 32 << 10, "llc": 256 << 10}
LEVELS = list(CAPACITY)

# A fixed guest-virtual window for the 'remote' program, mapped to blade mb0.
BASE = 0x7E0000000
SIZE = 16 << 20
REMOTE_RANGE = f"range={BASE:x}:{BASE + SIZE:x}:1:mb0"


def blade(stats: dict[str, Any], name: str = "mb0") -> dict[str, Any]:
    return next(b for b in stats["blades"] if b["name"] == name)


def node(stats: dict[str, Any], n: int) -> dict[str, Any]:
    return next(x for x in stats["total"]["nodes"] if x["node"] == n)


# ---- (1) options -------------------------------------------------------------

@pytest.mark.parametrize("opt, message", [
    ("bogus=1", "unknown option 'bogus'"),
    ("mode=fast", "mode=fast: use inject, account or paced"),
    ("cache=l1d:30000:8:64:private", "not a multiple of ways*line"),
    ("cache=llc:1M:16:64:shared", "must be private"),
    ("range=1000:2000:1:nosuch", "no blade named 'nosuch'"),
    ("blade=mb0:abc", "latency 'abc'"),
])
def test_bad_option_stops_qemu(built: Built, opt: str, message: str) -> None:
    proc = subprocess.run([QEMU_USER, "-plugin", plugin_arg(built.plugin, [opt]), "/bin/true"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    assert proc.stderr.startswith("libddc: ") and message in proc.stderr, proc.stderr


def test_overlapping_ranges_rejected(built: Built) -> None:
    opts = ["blade=mb0:400", "range=1000:3000:1:mb0", "range=2000:4000:2:mb0"]
    proc = subprocess.run([QEMU_USER, "-plugin", plugin_arg(built.plugin, opts), "/bin/true"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    assert "overlap" in proc.stderr


# ---- (2) the cache model -----------------------------------------------------

def miss_ratio(stats: dict[str, Any], level: str) -> float:
    lv = stats["total"]["levels"][level]
    misses: int = lv["misses"]
    hits: int = lv["hits"]
    return misses / (hits + misses)


def test_miss_ratio_steps_at_each_capacity(built: Built, tmp_path: Path) -> None:
    """A cyclic sweep larger than an LRU level misses every time; one that fits hits.

    Working sets just under (1/1.25) and just over (1.25x) each capacity.  A
    level is only judged where the sweep reaches it, i.e. where it is larger
    than the level above (otherwise the level sees start-up traffic only).
    """
    sizes = sorted({int(c / 1.25) // 64 * 64 for c in CAPACITY.values()}
                   | {int(c * 1.25) // 64 * 64 for c in CAPACITY.values()})
    ratios = {}
    for ws in sizes:
        res = run_guest(built, ["mode=account", f"cache={CACHE}"], "stride",
                        [str(ws), "64", "300000"], tmp_path)
        ratios[ws] = {lv: miss_ratio(res.stats, lv) for lv in LEVELS}
    for i, lv in enumerate(LEVELS):
        above = CAPACITY[LEVELS[i - 1]] if i else 0
        for ws, r in ratios.items():
            if ws <= above:
                continue
            if ws < CAPACITY[lv]:
                assert r[lv] < 0.05, f"{lv} at ws={ws}: miss ratio {r[lv]:.3f}, expected ~0 ({ratios})"
            else:
                assert r[lv] > 0.95, f"{lv} at ws={ws}: miss ratio {r[lv]:.3f}, expected ~1 ({ratios})"


def test_private_levels_are_per_vcpu_llc_is_shared(built: Built, tmp_path: Path) -> None:
    """The 'threads' program sweeps a buffer on the main thread, then on a second
    thread (a second vCPU in user mode): the second finds it in the shared LLC
    but not in its own (cold) private levels."""
    ws = 128 << 10  # > L2, < LLC
    res = run_guest(built, ["mode=account", f"cache={CACHE}"], "threads", [str(ws), "64"], tmp_path)
    vcpus = {v["vcpu"]: v for v in res.stats["vcpus"]}
    assert len(vcpus) == 2
    second = vcpus[max(vcpus)]["levels"]
    lines = ws // 64
    # one pass: every line misses its private L1/L2 and hits the LLC
    assert second["l2"]["misses"] >= lines
    assert second["llc"]["hits"] >= lines * 0.99
    assert second["llc"]["misses"] < lines * 0.01 + 200


def test_loads_stores_and_instructions(built: Built, tmp_path: Path) -> None:
    """The stride loop makes n loads, no stores, a handful of instructions
    each: instructions counted per TB, or not at all with insns=off (which
    drops the per-TB callback).  Start-up adds a few thousand accesses."""
    n = 100_000
    on = run_guest(built, ["mode=account"], "stride", ["4096", "64", str(n)], tmp_path).stats
    off = run_guest(built, ["mode=account", "insns=off"], "stride", ["4096", "64", str(n)],
                    tmp_path).stats
    for t in (on["total"], off["total"]):
        assert n <= t["loads"] < n + 10_000
        assert t["stores"] < 10_000
    assert on["total"]["insns"] > 4 * n
    assert off["total"]["insns"] == 0 and off["config"]["insns"] is False


# ---- (3) account mode charges exactly -----------------------------------------

def test_account_mode_charges_each_remote_miss_once(built: Built, tmp_path: Path) -> None:
    n = 5000  # 320 KB of lines: over the L1, within L2 for the second pass
    opts = ["mode=account", "local_ns=100", "blade=mb0:400", REMOTE_RANGE]
    res = run_guest(built, opts, "remote", [f"{BASE:x}", str(SIZE)], tmp_path,
                    stdin=f"touch 0 {n} 64\ntouch 0 {n} 64\n")
    s = res.stats
    assert blade(s)["accesses"] == n
    assert blade(s)["stall_ns"] == n * (400 - 100)
    assert blade(s)["queue_ns"] == 0
    assert s["total"]["modelled_stall_ns"] == n * 300
    assert s["total"]["injected_ns"] == 0
    assert node(s, 1) == {"node": 1, "accesses": 2 * n, "memory": n}


def test_account_mode_link_queueing(built: Built, tmp_path: Path) -> None:
    """At 0.001 GB/s a 64 B line holds the link for 64 us, far above the 300 ns
    extra latency, so each miss waits for the previous transfer minus the time
    the guest really took between the two. The link's 1 ms burst lets the
    first 1 ms / 64 us = 15.6 lines through at once (the link had been idle),
    so the total lies between (n-1-16)*(tx-d) - elapsed and (n-1)*(tx-d)."""
    n, tx, d, burst = 2000, 64_000, 300, 16
    opts = ["mode=account", "local_ns=100", "blade=mb0:400:0.001", REMOTE_RANGE]
    res = run_guest(built, opts, "remote", [f"{BASE:x}", str(SIZE)], tmp_path,
                    stdin=f"touch 0 {n} 64\n")
    elapsed = int(res.proc.stdout.split()[1])
    q = blade(res.stats)["queue_ns"]
    assert (n - 1 - burst) * (tx - d) - elapsed - 1000 <= q <= (n - 1) * (tx - d)
    assert blade(res.stats)["stall_ns"] == n * d + q


def test_link_bandwidth_is_shared_by_vcpus(built: Built, tmp_path: Path) -> None:
    """Two threads (two vCPUs) stream distinct lines at once over a 0.02 GB/s
    link with no extra latency: 2n lines of 64 B hold it for 2n x 3.2 us,
    several times the threads' own time (60-80 ms unlimited on a busy day
    here; at 0.1 GB/s the two were equal and the sum showed), and the guest
    sees that time. A link that made one vCPU queue behind the other's future
    (their clocks drift apart by up to a stall batch) would take far longer. (Inject mode only:
    in account mode each vCPU's clock runs ahead of real time by its own
    charges, so a link shared by several is only approximate; see README.)"""
    n, tx = 50_000, 3200
    opts = ["mode=inject", "local_ns=100", "blade=mb0:100:0.02", REMOTE_RANGE, "batch_ns=20000"]
    res = run_guest(built, opts, "remote", [f"{BASE:x}", str(SIZE)], tmp_path, stdin=f"pair 0 {n} 64\n")
    link_ns = 2 * n * tx
    elapsed = int(res.proc.stdout.split()[1])
    assert blade(res.stats)["accesses"] == 2 * n
    # 1 ms of burst below; above, starting two threads (two vCPUs) costs a few
    # ms, and on a busy host stalls oversleep by tens of us each (up to 1.24x
    # seen in 6 runs on 2026-12-02)
    assert 0.9 * link_ns <= elapsed <= 1.35 * link_ns, (elapsed, link_ns)


def test_same_bandwidth_again_keeps_the_link_schedule(live_guest: Any) -> None:
    """A campaign sets every link before each run, bandwidth included. Setting
    the bandwidth a link already has must not reset its schedule: a reset hands
    a stream in progress the link's 1 ms burst again, so a client repeating the
    setting every millisecond or so would lift the cap altogether."""
    n, tx = 50_000, 3200  # 0.02 GB/s: 160 ms of link time
    g = live_guest(["mode=inject", "local_ns=100", "blade=mb0:100:0.02", REMOTE_RANGE], [f"{BASE:x}", str(SIZE)])
    assert g.proc.stdin is not None and g.proc.stdout is not None
    g.proc.stdin.write(f"touch 0 {n} 64\n")
    g.proc.stdin.flush()
    sets, deadline = 0, time.monotonic() + 30
    while not select.select([g.proc.stdout], [], [], 0.0005)[0]:
        assert time.monotonic() < deadline, "the stream never ended"
        g.ctl.ok("set_link", blade="mb0", bandwidth_gbps=0.02)
        sets += 1
    elapsed = int(g.proc.stdout.readline().split()[1])
    assert sets > 20, sets
    assert elapsed >= 0.9 * n * tx, (elapsed, sets)
    assert blade(g.ctl.ok("stats"))["accesses"] == n


# ---- inject mode stalls for real ------------------------------------------------

def test_inject_mode_stalls_the_guest(built: Built, tmp_path: Path) -> None:
    n, d, batch = 500, 20_000, 100_000
    opts = ["mode=inject", "local_ns=100", f"blade=mb0:{100 + d}", REMOTE_RANGE, f"batch_ns={batch}"]
    res = run_guest(built, opts, "remote", [f"{BASE:x}", str(SIZE)], tmp_path,
                    stdin=f"touch 0 {n} 64\n")
    t = res.stats["total"]
    assert t["modelled_stall_ns"] == n * d
    # every owed ns is either paid (measured) or still owed
    assert t["injected_ns"] + t["owed_ns"] == n * d
    assert t["owed_ns"] < batch
    # batched: a stall starts once batch_ns is owed and sleeps at least that
    assert 1 <= t["stalls"] <= n * d // batch + 1
    # the guest's own clock saw the stall
    elapsed = int(res.proc.stdout.split()[1])
    assert elapsed >= t["injected_ns"]


def test_batch_changed_at_run_time(live_guest: Any) -> None:
    """set_batch changes how much owed stall a vCPU gathers before it pays:
    the same 5 ms of stall is paid in a few stalls with 1 ms batches, and in
    many with 20 us batches.  Each stall pays at least its batch, so the
    batch bounds the count from above; a stall oversleeps on a busy host (a
    20 us sleep took 51 us here), hence the loose lower bound."""
    n, d = 500, 10_000
    g = live_guest(["mode=inject", "local_ns=100", f"blade=mb0:{100 + d}", REMOTE_RANGE, "batch_ns=1000000"],
                   [f"{BASE:x}", str(SIZE)])
    assert g.ctl.ok("config")["batch_ns"] == 1_000_000
    assert g.command(f"touch 0 {n} 64").startswith("done")
    before = g.ctl.ok("stats")["total"]
    assert before["injected_ns"] + before["owed_ns"] == n * d
    assert 1 <= before["stalls"] <= n * d // 1_000_000

    g.ctl.ok("set_batch", batch_ns=20_000)
    assert g.ctl.ok("config")["batch_ns"] == 20_000
    assert g.command(f"touch {n} {n} 64").startswith("done")
    after = g.ctl.ok("stats")["total"]
    assert after["injected_ns"] + after["owed_ns"] == 2 * n * d
    assert 20 <= after["stalls"] - before["stalls"] <= n * d // 20_000 + 1

    assert "batch_ns must be 0..1000000000" in g.ctl("set_batch", batch_ns=2_000_000_000)["error"]
    assert "batch_ns must be a non-negative integer" in g.ctl("set_batch", batch_ns=-1)["error"]
    assert "unknown key 'batch'" in g.ctl("set_batch", batch=5)["error"]
    assert g.ctl.ok("config")["batch_ns"] == 20_000


# ---- (4) control socket ------------------------------------------------------------

def test_control_socket_live(live_guest: Any) -> None:
    # Start with no map, as the orchestrator does, and set it while running.
    g = live_guest(["mode=account", "local_ns=100"], [f"{BASE:x}", str(SIZE)])
    cfg = g.ctl.ok("config")
    assert cfg["mode"] == "account" and cfg["ranges"] == [] and cfg["blades"] == []
    assert [lv["name"] for lv in cfg["cache"]] == ["l1d", "l2", "llc"]

    # once the guest has answered, its start-up has run and been counted
    assert g.command("touch 0 0 64").startswith("done")
    s = g.ctl.ok("stats")
    assert s["total"]["insns"] > 1000 and s["total"]["loads"] > 100
    assert node(s, 0)["accesses"] == s["total"]["loads"] + s["total"]["stores"]

    g.ctl.ok("set_link", blade="mb0", latency_ns=1000)
    g.ctl.ok("set_map", ranges=[{"start": f"0x{BASE:x}", "end": BASE + SIZE, "node": 1,
                                 "blade": "mb0"}])
    cfg = g.ctl.ok("config")
    assert cfg["ranges"] == [{"start": f"0x{BASE:x}", "end": f"0x{BASE + SIZE:x}", "node": 1,
                              "blade": "mb0"}]

    assert g.command("touch 0 1000 64").startswith("done")
    s = g.ctl.ok("stats")
    assert blade(s)["accesses"] == 1000
    assert blade(s)["stall_ns"] == 1000 * 900
    assert node(s, 1)["memory"] == 1000

    g.ctl.ok("reset")
    s = g.ctl.ok("stats")
    assert s["resets"] == 1
    assert blade(s)["accesses"] == 0 and s["total"]["modelled_stall_ns"] == 0

    # latency changes apply to the very next miss
    g.ctl.ok("set_link", blade="mb0", latency_ns=250)
    g.command("touch 1000 1000 64")
    assert blade(g.ctl.ok("stats"))["stall_ns"] == 1000 * 150
    g.ctl.ok("set_local_latency", local_ns=50)
    g.command("touch 2000 1000 64")
    s = g.ctl.ok("stats")
    assert blade(s)["stall_ns"] == 1000 * 150 + 1000 * 200
    assert blade(s)["latency_ns"] == 250

    # errors are answered, and the connection stays usable
    reply = g.ctl("nope")
    assert set(reply) == {"ok", "error"} and reply["ok"] is False
    assert "unknown cmd 'nope'" in reply["error"]
    assert "blade must be" in g.ctl("set_link", latency_ns=5)["error"]
    assert "unknown key 'latency'" in g.ctl("set_link", blade="mb0", latency=5)["error"]
    assert g.ctl.raw("{not json")["ok"] is False
    assert "overlap" in g.ctl("set_map", ranges=[{"start": 0, "end": 10, "node": 1},
                                                 {"start": 5, "end": 20, "node": 1}])["error"]
    assert g.ctl.ok("stats")["resets"] == 1

    # end of input: the guest exits, the final file holds the since-reset counts
    assert g.proc.stdin is not None
    g.proc.stdin.close()
    assert g.proc.wait(timeout=30) == 0
    final = json.loads(g.stats_path.read_text())
    assert blade(final)["accesses"] == 2000
    assert blade(final)["stall_ns"] == 350_000
    assert final["config"]["local_ns"] == 50
    assert not Path(cfg["sock"]).exists(), "socket left behind"
