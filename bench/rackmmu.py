#!/usr/bin/env python3
"""Grant and steal latency of the Rack MMU against copying the same bytes over the network.

    .venv/bin/python bench/rackmmu.py [--sizes 64M,256M,1G] [--grants 3] [--steals 1] [--copy-up-to 256M]

For each size: a region of that size is attached to cb0 and filled in the
guest; it is then granted cb0 -> cb1 -> cb0 ... ``--grants`` times, each grant
timed by phase (release in the owner's guest, hot-unplug, hot-plug, map in the
receiver's guest). Then it is stolen ``--steals`` times from its owner, which is
not asked: the owner's QEMU is stopped (fenced), the region plugged into the
other blade and mapped there; the fenced blade is restarted (not timed) before
the next steal. The comparison is what a system without shared memory blades
does: stream the bytes out of cb0 and into cb1 over SSH (through the host), for
the same size. Prints figures only: nothing here is asserted. The testbed
(the example rack, named bench-rackmmu) is brought up first and down at the end.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orchestrator import rack, testbed  # noqa: E402
from orchestrator.spec import format_size, parse_size  # noqa: E402

NAME = "bench-rackmmu"


def ssh(st: testbed.TestbedState, blade: str, command: str, **kw: object) -> subprocess.CompletedProcess[bytes]:
    argv = testbed.endpoint(st, blade).ssh_argv("sh", "-c", command)
    return subprocess.run(argv, check=True, capture_output=True, **kw)  # type: ignore[call-overload]


def other(blade: str) -> str:
    return "cb1" if blade == "cb0" else "cb0"


def moves(op: Callable[..., tuple[object, dict[str, float]]], region: str, owner: str, times: int,
          after: Callable[[str], object] | None = None) -> tuple[list[float], list[dict[str, float]], str]:
    """Move ``region`` from ``owner`` to the other blade and back, ``times`` moves
    in all, with ``op`` (rack.grant or rack.steal); each timed whole and by
    phase. ``after(previous_owner)`` runs untimed after each move. Returns the
    times, the phases and the last owner."""
    totals, phases = [], []
    for _ in range(times):
        t0 = time.monotonic()
        _, timings = op(NAME, region, other(owner))
        totals.append(time.monotonic() - t0)
        phases.append(timings)
        if after is not None:
            after(owner)
        owner = other(owner)
    return totals, phases, owner


def phase_medians(phases: list[dict[str, float]]) -> str:
    if not phases:
        return ""
    return ", ".join(f"{k} {statistics.median(p[k] for p in phases):.2f} s" for k in phases[0])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="64M,256M,1G")
    ap.add_argument("--grants", type=int, default=3)
    ap.add_argument("--steals", type=int, default=1, help="steals per size (each restarts the fenced blade)")
    ap.add_argument("--copy-up-to", default="256M",
                    help="network copies only up to this size (under TCG SSH moves about 1.3 MB/s: 1G takes ~13 min)")
    args = ap.parse_args()

    data = yaml.safe_load((ROOT / "examples" / "rack.yaml").read_text())
    data["name"] = NAME
    rows = []
    with testbed.running(data) as st:
        for i, size in enumerate(args.sizes.split(",")):
            nbytes = parse_size(size)
            name = f"b{i}"
            rack.attach(NAME, "cb0", memory_blade="mb0", size=nbytes, region=name)
            t0 = time.monotonic()
            ssh(st, "cb0", f"head -c {nbytes - 8} /dev/zero | ddc-region put {name}")
            fill = time.monotonic() - t0
            totals, phases, owner = moves(rack.grant, name, "cb0", args.grants)
            copy = None
            if nbytes <= parse_size(args.copy_up_to):
                # The data path without shared memory: out of one blade, into another, over the network.
                rack.attach(NAME, other(owner), memory_blade="mb0", size=nbytes, region=f"{name}c")
                t0 = time.monotonic()
                src = subprocess.Popen(testbed.endpoint(st, owner).ssh_argv("ddc-region", "get", name),
                                       stdout=subprocess.PIPE)
                subprocess.run(testbed.endpoint(st, other(owner)).ssh_argv("ddc-region", "put", f"{name}c"),
                               stdin=src.stdout, check=True, capture_output=True)
                src.wait()
                copy = time.monotonic() - t0
                rack.detach(NAME, f"{name}c")
            # the fenced owner is restarted for the next round
            steals, steal_phases, owner = moves(rack.steal, name, owner, args.steals,
                                                after=lambda fenced: testbed.restart_blade(NAME, fenced))
            rack.detach(NAME, name)
            steal_s = statistics.median(steals) if steals else None
            rows.append((nbytes, statistics.median(totals), steal_s, copy, fill))
            print(f"{format_size(nbytes):>5}: grant median {statistics.median(totals):.2f} s over "
                  f"{args.grants} ({phase_medians(phases)}); "
                  f"steal {'-' if steal_s is None else f'{steal_s:.2f} s'} ({phase_medians(steal_phases)}); "
                  f"copy over SSH {'-' if copy is None else f'{copy:.1f} s'}; fill in guest {fill:.1f} s",
                  flush=True)
    print("\nsize    grant (s)   steal (s)   copy over the network (s)")
    for nbytes, grant_s, steal_s, copy_s, _ in rows:
        print(f"{format_size(nbytes):>5}   {grant_s:9.2f}   {'-' if steal_s is None else f'{steal_s:9.2f}'}   "
              f"{'-' if copy_s is None else f'{copy_s:9.1f}'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
