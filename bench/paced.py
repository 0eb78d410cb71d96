#!/usr/bin/env python3
"""Paced mode's figures: exactness, independence from the host's load, the
timer tick's cost, and the wall-clock price. Printed, never asserted (the
properties are asserted by tests/vm/test_paced.py).

    .venv/bin/python bench/paced.py [--dilation auto|K] [--reps 3] [--skip-hog]
    .venv/bin/python bench/paced.py --sweep [--inject] [--sweep-campaign examples/latency-sweep.yaml]
    .venv/bin/python bench/paced.py --sweep --against results/latency-sweep [--inject]
    .venv/bin/python bench/paced.py --compare STORE STORE

One blade (2 vCPUs, 1G local, 1G on mb0, a 1M LLC so that the probes' 32M
buffers miss it) in paced mode, named bench-paced, is brought up with
nohz_full=1 for the probes, measured and brought down; then again without it
for sysbench. Every figure is in model time (the guest's measurement
divided by k, or a rate multiplied by k) unless it says "wall".

1. The paired probe (`ddc-ptrchase -N 0,1`, pinned to vCPU 1, which the
   blade boots tickless) at 150, 400 and 900 ns added: node 1 - node 0 per
   load against the added latency; node 0 per load against the model's own
   price of one step (its instructions x cpi_ns + local latency).
2. The timer tick: the same node-0 chase pinned to vCPU 0, which keeps its
   250 Hz tick (nohz_full=1 spares only CPU 1), against vCPU 1.
3. Host independence: the probe, and `sysbench memory` (2 threads, node 1;
   MiB moved over the threads' mean execution time), alone and next to a
   busy loop pinned to one host core, alternating.
4. With --sweep: `ddc run` of the latency sweep in paced mode twice, alone and
   next to the hog, and every point's mean slowdown side by side (the
   campaign's own testbed file is used, with mode: paced; results under
   /tmp/ddc-sweep-*); with --inject, once more on the same rack in inject
   mode, for the wall-clock price of pacing. With --against STORE (for
   example `make demo`'s results/latency-sweep), that store stands for the
   run alone: only the run next to the hog is made, on a testbed brought up
   (and its dilation measured) afresh.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orchestrator import execute, report, testbed  # noqa: E402
from orchestrator.store import Store  # noqa: E402
from tests.vm.paced_probes import LOCAL_NS, Blade, hog, rack  # noqa: E402

NAME = "bench-paced"
SYSBENCH = {"node": 1, "threads": 2, "block": "4M", "total": "256M"}


def pct(x: float, ref: float) -> str:
    return f"{100 * (x / ref - 1):+.2f} %"


def exactness(b: Blade, reps: int) -> None:
    print("\n1. exactness (model ns per dependent load, pinned to tickless vCPU 1)")
    steps = b.insns_per_step()
    model0 = steps * b.cpi + LOCAL_NS
    print(f"   the chase loop: {steps:.3f} instructions per step; the model's price of a node-0 step: {model0:.2f} ns")
    print(f"   {'added':>6} {'node1-node0':>12} {'error':>9} {'node0':>8} {'error':>9} {'lag':>7} {'wall s':>7}")
    for added in (150, 400, 900):
        b.link(LOCAL_NS + added)
        for _ in range(reps):
            p = b.probe()
            print(f"   {added:6d} {p.diff_ns:12.1f} {pct(p.diff_ns, added):>9} {p.node0_ns:8.2f} "
                  f"{pct(p.node0_ns, model0):>9} {100 * p.clocks.lag_fraction:6.2f}% {p.wall_s:7.1f}")
    print("\n2. the guest's timer tick (node-0 ns per load, model)")
    for cpu, what in ((0, "vCPU 0, 250 Hz tick"), (1, "vCPU 1, nohz_full")):
        n0s = [b.probe(cpu).node0_ns for _ in range(reps)]
        print(f"   {what:20s} {statistics.median(n0s):8.2f} ns ({pct(statistics.median(n0s), model0)} "
              f"against the model's price), runs: {', '.join(f'{x:.2f}' for x in n0s)}")


def probe_independence(b: Blade, reps: int) -> None:
    print("\n3a. host independence of the probe (model time; the hog is a busy loop pinned to host core 1)")
    b.link(LOCAL_NS + 400)
    print(f"   {'':14} {'node0 ns':>9} {'diff ns':>9} {'lag':>7} {'wall s':>7}")
    for _ in range(reps):
        for busy in (False, True):
            with hog() if busy else nullcontext():
                p = b.probe()
            print(f"   {'next to a hog' if busy else 'alone':14} {p.node0_ns:9.2f} {p.diff_ns:9.1f} "
                  f"{100 * p.clocks.lag_fraction:6.2f}% {p.wall_s:7.1f}")


def sysbench_independence(b: Blade, reps: int) -> None:
    print("\n3b. host independence of sysbench memory, 2 threads on node 1 (MiB over the threads' mean "
          "execution time, model)")
    b.link(LOCAL_NS + 400)
    rows: dict[bool, list[float]] = {False: [], True: []}
    print(f"   {'':14} {'MiB/s':>9} {'lag':>7} {'wall s':>7}")
    for _ in range(reps):
        for busy in (False, True):
            with hog() if busy else nullcontext():
                mib, clocks, wall = b.sysbench(**SYSBENCH)
            rows[busy].append(mib)
            print(f"   {'next to a hog' if busy else 'alone':14} {mib:9.1f} {100 * clocks.lag_fraction:6.2f}% "
                  f"{wall:7.1f}")
    alone, hogged = statistics.median(rows[False]), statistics.median(rows[True])
    print(f"   medians: alone {alone:.1f}, next to the hog {hogged:.1f} ({pct(hogged, alone)})")


def _campaign_on(campaign: Path, tmp: Path, mode: str) -> Path:
    """A copy of ``campaign`` whose testbed is its own in ``mode``, named bench-sweep."""
    data = yaml.safe_load(campaign.read_text())
    rack = yaml.safe_load((campaign.parent / data["testbed"]).resolve().read_text())
    rack.update(name="bench-sweep", mode=mode, accel="tcg")
    (tmp / f"rack-{mode}.yaml").write_text(yaml.safe_dump(rack))
    data["testbed"] = str(tmp / f"rack-{mode}.yaml")
    file = tmp / f"campaign-{mode}.yaml"
    file.write_text(yaml.safe_dump(data))
    return file


def _run(file: Path, label: str, busy: bool) -> Path:
    out = Path(f"/tmp/ddc-sweep-{label.replace(' ', '-')}-{int(time.time())}")
    t0 = time.monotonic()
    with hog() if busy else nullcontext():
        outcome = execute.run_campaign(file, out)
    print(f"   {label}: {outcome.executed} runs in {time.monotonic() - t0:.0f} s wall "
          f"({outcome.statuses}); results in {out}", flush=True)
    return out


def sweep(campaign: Path, inject: bool, against: Path | None) -> None:
    first = f"alone in {against}" if against else "alone"
    print(f"\n4. {campaign.name} in paced mode, twice: {first}, then next to the hog"
          + ("; then once in inject mode" if inject else ""))
    with tempfile.TemporaryDirectory() as tmp:
        paced = _campaign_on(campaign, Path(tmp), "paced")
        testbed.down("bench-sweep")
        try:
            testbed.up(yaml.safe_load(paced.read_text())["testbed"], say=print)
            st = testbed.load_up("bench-sweep")
            print(f"   dilation {st.dilation:g}")
            outs = [against or _run(paced, "paced alone", False), _run(paced, "paced next to a hog", True)]
            if inject:
                testbed.down("bench-sweep")
                _run(_campaign_on(campaign, Path(tmp), "inject"), "inject alone", False)
        finally:
            testbed.down("bench-sweep")
    compare(*outs)


def compare(first_store: Path, second_store: Path) -> None:
    """Every point's mean slowdown (model time when paced) in two stores of one campaign, side by side."""
    slowdowns = []
    for out in (first_store, second_store):
        with Store.open_existing(out) as store:
            slowdowns.append(report.mean_slowdowns(store))
            ks = sorted({r["dilation"] for r in store.runs() if r["dilation"]})
            print(f"   {out}: dilation {', '.join(f'{k:g}' for k in ks) or 'none (not paced)'}")
    first, second = slowdowns
    print(f"   {'point (mean slowdown, model time)':64} {'first':>8} {'second':>8} {'diff':>8}")
    for key in sorted(first):
        if key in second:
            print(f"   {key:64} {first[key]:8.3f} {second[key]:8.3f} {pct(second[key], first[key]):>8}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dilation", default="auto", help="auto (measured at up) or a number")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--skip-hog", action="store_true", help="leave out the host-independence runs")
    ap.add_argument("--sweep", action="store_true", help="run only the latency sweep twice (long)")
    ap.add_argument("--sweep-campaign", default=str(ROOT / "examples" / "latency-sweep.yaml"))
    ap.add_argument("--inject", action="store_true", help="with --sweep: also once in inject mode, for its wall time")
    ap.add_argument("--against", type=Path, metavar="STORE",
                    help="with --sweep: a paced run of the campaign (make demo's) stands for the one alone")
    ap.add_argument("--compare", type=Path, nargs=2, metavar="STORE",
                    help="only print two stores' mean slowdowns side by side (first, then second), running nothing")
    args = ap.parse_args()
    for store in [*(args.compare or []), *([args.against] if args.against else [])]:
        if not (store / "results.sqlite").is_file():
            ap.error(f"{store}: no results.sqlite there; give a campaign's --out directory")
    if args.compare:
        compare(*args.compare)
        return 0
    if args.sweep:
        sweep(Path(args.sweep_campaign), args.inject, args.against)
        return 0
    dilation = args.dilation if args.dilation == "auto" else float(args.dilation)
    # The probes run pinned to a tickless vCPU 1; sysbench's threads on a blade
    # that ticks everywhere (with nohz_full, Linux balances load only from
    # CPU 0, and two threads may share it while CPU 1 idles).
    for changes, phases in (({"kernel_args": ["nohz_full=1"]}, ("exactness", "probe")), ({}, ("sysbench",))):
        if args.skip_hog and phases == ("sysbench",):
            continue
        t0 = time.monotonic()
        with testbed.running(rack(NAME, dilation=dilation, **changes),
                             say=lambda m: print("   " + m, flush=True)) as st:
            print(f"\nup in {time.monotonic() - t0:.1f} s wall: dilation {st.dilation:g}, cpi_ns {st.cpi_ns:g}, "
                  f"kernel args {changes.get('kernel_args', [])}")
            b = Blade(st)
            if "exactness" in phases:
                exactness(b, args.reps)
            if "probe" in phases and not args.skip_hog:
                probe_independence(b, args.reps)
            if "sysbench" in phases:
                sysbench_independence(b, args.reps)
            b.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
