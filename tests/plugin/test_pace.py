"""libddc's paced mode under qemu-x86_64 (user mode, where the guest's clock is
the host's): the guest measures k x the model's time, the model clock is priced
from the counters, lag and idle are accounted, and bad settings are refused."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .conftest import QEMU_USER, Built, plugin_arg, run_guest

# Hit times on every level, so that the model clock prices each access.
CACHE = "l1d:4K:4:64:private:1;l2:32K:8:64:private:4;llc:256K:16:64:shared:15"
BASE = 0x7E0000000
SIZE = 16 << 20  # 64x the LLC: a random chase misses it on nearly every load
LOCAL_NS, REMOTE_NS, CPI_NS = 100, 600, 0.5
PACED = ["mode=paced", f"cpi_ns={CPI_NS}", f"local_ns={LOCAL_NS}", f"cache={CACHE}",
         f"blade=mb0:{REMOTE_NS}", f"range={BASE:x}:{BASE + SIZE:x}:1:mb0"]


def measured(res: Any, what: str) -> float:
    m = re.search(rf"^{what} ([\d.]+)$", res.proc.stdout, re.M)
    assert m, res.proc.stdout
    return float(m.group(1))


def vcpu0(stats: dict[str, Any]) -> dict[str, Any]:
    return next(v for v in stats["vcpus"] if v["vcpu"] == 0)


def test_a_chase_takes_k_times_its_model_time(built: Built, tmp_path: Path) -> None:
    """3 instructions and one remote load that misses every level per step:
    k x (3 x cpi + the blade's latency) on the guest's own clock."""
    k = 10
    res = run_guest(built, [*PACED, f"dilation={k}"], "chase", [f"{BASE:x}", str(SIZE), "100000"], tmp_path)
    model = 3 * CPI_NS + REMOTE_NS
    assert measured(res, "chase") / k == pytest.approx(model, rel=0.02)
    s = res.stats
    assert s["mode"] == "paced" and s["dilation"] == k and s["cpi_ns"] == CPI_NS
    assert s["total"]["waits"] > 0 and s["total"]["wait_ns"] > 0


def test_instructions_alone_cost_cpi(built: Built, tmp_path: Path) -> None:
    """A loop of 2 instructions and no data access: k x 2 x cpi per iteration.
    k is large because TCG runs such a loop at ~10 ns an iteration."""
    k = 40
    res = run_guest(built, [*PACED, f"dilation={k}"], "chase", ["0", "0", "5000000"], tmp_path)
    assert measured(res, "loop") / k == pytest.approx(2 * CPI_NS, rel=0.02)


def test_free_running_prices_the_counters(built: Built, tmp_path: Path) -> None:
    """dilation=0: nothing waits, but the model clock still runs: every
    instruction at cpi, every access at the hit time of the level that served
    it, every memory access at its latency."""
    res = run_guest(built, [*PACED, "dilation=0"], "chase", [f"{BASE:x}", str(SIZE), "50000"], tmp_path)
    s = res.stats
    t = s["total"]
    lines = t["loads"] + t["stores"] + t["split"]
    hits = {name: lv["hits"] for name, lv in t["levels"].items()}
    memory = sum(n["memory"] for n in t["nodes"])
    expected = (t["insns"] * CPI_NS + hits["l1d"] * 1 + hits["l2"] * 4 + hits["llc"] * 15
                + memory * LOCAL_NS + t["modelled_stall_ns"])
    assert hits["l1d"] + hits["l2"] + hits["llc"] + memory == lines
    assert t["modelled_stall_ns"] >= 50000 * (REMOTE_NS - LOCAL_NS)
    # The chase runs on a thread of its own (a second vCPU). Each clock prices
    # what ran up to its last block start or syscall: the exit path's last
    # block may be missing.
    assert len(s["vcpus"]) == 2
    assert sum(v["model_ns"] for v in s["vcpus"]) == pytest.approx(expected, abs=200)
    assert t["waits"] == 0 and t["lag_ns"] == 0


def test_a_host_that_cannot_keep_up_lags_and_says_so(built: Built, tmp_path: Path) -> None:
    """k = 1 asks the emulator to run a loop at real-hardware speed: it cannot,
    the vCPU falls behind past the window, and the shortfall is lag, pulled up
    into the model clock (so it never becomes credit)."""
    res = run_guest(built, [*PACED, "dilation=1", "window_us=1000"], "chase", ["0", "0", "20000000"], tmp_path)
    v = vcpu0(res.stats)
    assert v["lag_ns"] > 0.5 * v["model_ns"]
    assert v["model_ns"] >= v["lag_ns"] + 20000000 * 2 * CPI_NS * 0.99


def test_syscalls_are_idle_and_the_clock_follows_wall_time(built: Built, tmp_path: Path) -> None:
    """In user mode a syscall is the vCPU's idle time: the model clock follows
    wall / k across it, with no lag and no wait for it."""
    k = 20
    res = run_guest(built, [*PACED, f"dilation={k}"], "sleeper", ["200"], tmp_path)
    v = vcpu0(res.stats)
    assert v["idle_ns"] >= 200e6
    assert v["idle_model_ns"] == pytest.approx(v["idle_ns"] / k, rel=0.01)
    assert v["lag_ns"] == 0


def test_dilation_changes_at_run_time(live_guest: Any) -> None:
    g = live_guest([*PACED, "dilation=5"], [f"{BASE:x}", str(SIZE)])
    times = {}
    for k in (5, 20):
        g.ctl.ok("set_pacing", dilation=k)
        assert g.ctl.ok("config")["dilation"] == k
        done = g.command("touch 0 20000 64")  # 20000 remote lines, cold in every level
        times[k] = float(done.split()[1]) / 20000
    # per line: k x (a few instructions + the blade's latency); 4x the k, 4x the time
    assert times[20] / times[5] == pytest.approx(4, rel=0.1)
    assert times[20] / 20 == pytest.approx(REMOTE_NS, rel=0.1)


@pytest.mark.parametrize("opt, message", [
    ("dilation=0.5", "dilation=0.5: want a number, 1..100000 (0: free-running)"),
    ("dilation=fast", "dilation=fast: want a number"),
    ("cpi_ns=0", "cpi_ns=0: want a number of ns, 0.001..1000000"),
    ("window_us=-1", "window_us=-1: want 0..10000000 us"),
])
def test_bad_pacing_option_stops_qemu(built: Built, opt: str, message: str) -> None:
    proc = subprocess.run([QEMU_USER, "-plugin", plugin_arg(built.plugin, ["mode=paced", opt]), "/bin/true"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    assert proc.stderr.startswith("libddc: ") and message in proc.stderr, proc.stderr


def test_paced_needs_instructions_counted(built: Built) -> None:
    proc = subprocess.run([QEMU_USER, "-plugin", plugin_arg(built.plugin, ["mode=paced", "insns=off"]),
                           "/bin/true"], capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0 and "mode paced needs instructions counted" in proc.stderr, proc.stderr


def test_bad_set_pacing_is_refused(live_guest: Any) -> None:
    g = live_guest(["mode=inject"], [f"{BASE:x}", str(SIZE)])
    for request, message in ((dict(dilation=0.2), "dilation 0.2: want 1..100000"),
                             (dict(cpi_ns=-1), "cpi_ns -1: want 0.001..1000000"),
                             (dict(window_us=1.5), "window_us must be a non-negative integer"),
                             ({}, "give dilation, cpi_ns and/or window_us"),
                             (dict(dilation="x"), "dilation and cpi_ns must be numbers")):
        reply = g.ctl("set_pacing", **request)
        assert reply["ok"] is False and message in reply["error"], (request, reply)
    g.ctl.ok("set_mode", mode="paced")
    assert g.ctl.ok("config")["mode"] == "paced"
    g.ctl.ok("set_mode", mode="inject")
