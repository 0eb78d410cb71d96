"""Where does the guest's extra stall come from? Printed, never asserted.

The plugin's stalls are exact (injected_ns == modelled_stall_ns), yet a guest
that waits on remote memory measures 10-15 % more than the added latency (see
bench/RESULTS.md, 2026-12-02). This runs bench/progs/stall_chase.c two
ways to show where the extra time goes:

* natively on the host, stalling itself as libddc stalls a vCPU (owed ns per
  load, paid by sleeping to a deadline or by spinning once a batch is owed):
  ns per load without the waits, against a run with nothing added;
* under qemu-x86_64 with libddc (user mode: no guest kernel, no softmmu TLB),
  two buffers chased in alternating rounds, one of them in a remote range:
  the median of remote - local per load, against the added latency.

    .venv/bin/python bench/stall_gap.py [--added 900] [--batches 2000,20000,200000,2000000]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "bench" / "progs" / "stall_chase.c"
PLUGIN = REPO / "qemu_devices" / "build" / "libddc.so"
REMOTE = "range=7e0000000:7e4000000:1:mb0"  # buffer B of `stall_chase pair`


def value(out: str, key: str) -> float:
    m = re.search(rf"{key}=(-?[\d.]+)", out)
    if not m:
        sys.exit(f"no {key}= in: {out}")
    return float(m.group(1))


def run(argv: list[str]) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--added", type=int, default=900, help="ns added per remote load (default 900)")
    ap.add_argument("--batches", default="2000,20000,200000,2000000", help="batch_ns values, comma-separated")
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    subprocess.run(["make", "-s", "-C", str(REPO / "qemu_devices")], check=True)
    with tempfile.TemporaryDirectory() as tmp:
        exe = str(Path(tmp) / "stall_chase")
        subprocess.run(["gcc", "-O2", "-static", "-o", exe, str(SOURCE)], check=True)

        base = value(run([exe, "native", "0", "20000", "sleep"]), "without_waits")
        print(f"native, nothing added: {base:.1f} ns per load")
        print(f"{'native':8} {'batch_ns':>9} {'stall':>6} {'ns/load w/o waits':>18} {'extra':>7}")
        for batch in batches:
            for stall in ("sleep", "spin"):
                ns = value(run([exe, "native", str(args.added), str(batch), stall]), "without_waits")
                print(f"{'':8} {batch:9d} {stall:>6} {ns:18.1f} {100 * (ns / base - 1):6.1f}%")

        print(f"\nqemu-x86_64 + libddc, {args.added} ns added (remote - local per load):")
        opts = f"local_ns=100,blade=mb0:{100 + args.added},{REMOTE}"
        off = value(run(["qemu-x86_64", "-plugin", f"{PLUGIN},mode=account,{opts}", exe, "pair"]), "diff_ns_median")
        print(f"{'account (no stall)':>24} {off:8.1f}")
        for batch in batches:
            diff = value(run(["qemu-x86_64", "-plugin", f"{PLUGIN},mode=inject,batch_ns={batch},{opts}", exe,
                              "pair"]), "diff_ns_median")
            print(f"{'inject, batch ' + str(batch):>24} {diff:8.1f}  ({100 * (diff / args.added - 1):+.1f} %)")


if __name__ == "__main__":
    main()
