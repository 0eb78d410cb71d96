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
import tempfile
import time
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
    with tempfile.TemporaryDirectory() as tmp:
        rack_file = Path(tmp) / "rack.yaml"
        rack_file.write_text(yaml.safe_dump(data))
        testbed.down(NAME)
        try:
            testbed.up(rack_file)
            st = testbed.load_up(NAME)
            for i, size in enumerate(args.sizes.split(",")):
                nbytes = parse_size(size)
                name = f"b{i}"
                rack.attach(NAME, "cb0", memory_blade="mb0", size=nbytes, region=name)
                t0 = time.monotonic()
                ssh(st, "cb0", f"head -c {nbytes - 8} /dev/zero | ddc-region put {name}")
                fill = time.monotonic() - t0
                totals, phases = [], []
                owner = "cb0"
                for _ in range(args.grants):
                    to = "cb1" if owner == "cb0" else "cb0"
                    t0 = time.monotonic()
                    _, timings = rack.grant(NAME, name, to)
                    totals.append(time.monotonic() - t0)
                    phases.append(timings)
                    owner = to
                copy = None
                if nbytes <= parse_size(args.copy_up_to):
                    # The data path without shared memory: out of one blade, into another, over the network.
                    rack.attach(NAME, "cb0" if owner == "cb1" else "cb1", memory_blade="mb0", size=nbytes,
                                region=f"{name}c")
                    other = "cb0" if owner == "cb1" else "cb1"
                    t0 = time.monotonic()
                    src = subprocess.Popen(testbed.endpoint(st, owner).ssh_argv("ddc-region", "get", name),
                                           stdout=subprocess.PIPE)
                    subprocess.run(testbed.endpoint(st, other).ssh_argv("ddc-region", "put", f"{name}c"),
                                   stdin=src.stdout, check=True, capture_output=True)
                    src.wait()
                    copy = time.monotonic() - t0
                    rack.detach(NAME, f"{name}c")
                steals, steal_phases = [], []
                for _ in range(args.steals):
                    to = "cb1" if owner == "cb0" else "cb0"
                    t0 = time.monotonic()
                    _, timings = rack.steal(NAME, name, to)
                    steals.append(time.monotonic() - t0)
                    steal_phases.append(timings)
                    testbed.restart_blade(NAME, owner)  # the fenced owner, for the next round
                    owner = to
                rack.detach(NAME, name)
                med = {k: statistics.median(p[k] for p in phases) for k in phases[0]}
                steal_s = statistics.median(steals) if steals else None
                rows.append((nbytes, statistics.median(totals), steal_s, copy, fill))
                smed = {k: statistics.median(p[k] for p in steal_phases) for k in steal_phases[0]} if steals else {}
                print(f"{format_size(nbytes):>5}: grant median {statistics.median(totals):.2f} s over "
                      f"{args.grants} ({', '.join(f'{k} {v:.2f} s' for k, v in med.items())}); "
                      f"steal {'-' if steal_s is None else f'{steal_s:.2f} s'} "
                      f"({', '.join(f'{k} {v:.2f} s' for k, v in smed.items())}); "
                      f"copy over SSH {'-' if copy is None else f'{copy:.1f} s'}; fill in guest {fill:.1f} s",
                      flush=True)
        finally:
            testbed.down(NAME)
    print("\nsize    grant (s)   steal (s)   copy over the network (s)")
    for nbytes, grant_s, steal_s, copy_s, _ in rows:
        print(f"{format_size(nbytes):>5}   {grant_s:9.2f}   {'-' if steal_s is None else f'{steal_s:9.2f}'}   "
              f"{'-' if copy_s is None else f'{copy_s:9.1f}'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
