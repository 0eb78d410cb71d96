#!/usr/bin/env python3
"""Time `ddc up` until every blade has booted (SSH answers and systemd says the
boot is over), and `ddc down`, for the example rack.

    .venv/bin/python bench/provision.py [--runs 3] [--rack examples/rack.yaml]

The image is built (or found in the cache) before the first timed run, so the
figures are provisioning alone. Each run prints its own times; the summary gives
median, min and max. Prints figures only: nothing here is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestrator import image, state, testbed  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rack", default=str(Path(__file__).resolve().parent.parent / "examples" / "rack.yaml"))
    args = ap.parse_args()

    data = yaml.safe_load(Path(args.rack).read_text())
    data["name"] = "bench-rack"
    with tempfile.TemporaryDirectory() as tmp:
        rack = Path(tmp) / "bench-rack.yaml"
        rack.write_text(yaml.safe_dump(data))
        image.build_image(data.get("image", "debian-bookworm"))
        testbed.down("bench-rack")  # leftovers of an interrupted bench
        ups, downs, slowest = [], [], []
        accel = "?"
        for i in range(args.runs):
            t0 = time.monotonic()
            views = testbed.up(rack)
            t1 = time.monotonic()
            st = state.load("bench-rack")
            accel = st.accel if st else "?"
            testbed.down("bench-rack")
            t2 = time.monotonic()
            ups.append(t1 - t0)
            downs.append(t2 - t1)
            slowest.append(max(v.boot_s or 0.0 for v in views))
            boots = ", ".join(f"{v.name} {v.boot_s:.1f} s" for v in views)
            print(f"run {i + 1}: up {ups[-1]:.1f} s (booted after start: {boots}), down {downs[-1]:.1f} s",
                  flush=True)
    print(f"\n{len(data['compute_blades'])} compute blades, accel {accel}, {args.runs} runs")
    for label, xs in (("up (until every blade has booted)", ups), ("slowest blade, start to booted", slowest),
                      ("down", downs)):
        print(f"{label:38s} median {statistics.median(xs):6.1f} s   min {min(xs):6.1f} s   max {max(xs):6.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
