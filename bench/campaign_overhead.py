#!/usr/bin/env python3
"""Per-run orchestration overhead of `ddc run`, with the testbed already up.

    .venv/bin/python bench/campaign_overhead.py [--runs 20] [--workload ddc-ptrchase]

Overhead per run = (wall time of the campaign's runs - the workloads' own time,
measured in the guest) / runs. The testbed (one blade of the example rack,
named bench-campaign) is brought up before the clock starts and down at the
end. Each run changes mb0's latency, so the figure includes the runtime link
change, the guest snapshots, the plugin's reset and statistics, the 1-second
samplers, libvirt's domain statistics and the SQLite commit. Prints figures
only: nothing here is asserted.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orchestrator import execute, testbed  # noqa: E402
from orchestrator.store import Store  # noqa: E402

NAME = "bench-campaign"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--workload", default="ddc-ptrchase")
    ap.add_argument("--params", default="size=4M,loads=20000",
                    help="fixed workload parameters, k=v,... (default: a probe run well under a second)")
    ap.add_argument("--keep", action="store_true", help="leave the testbed up")
    args = ap.parse_args()

    rack = yaml.safe_load((ROOT / "examples" / "rack.yaml").read_text())
    rack["name"] = NAME
    rack["compute_blades"] = rack["compute_blades"][:1]
    params = dict(kv.split("=", 1) for kv in args.params.split(",") if kv)
    with tempfile.TemporaryDirectory() as tmp:
        rack_file = Path(tmp) / "rack.yaml"
        rack_file.write_text(yaml.safe_dump(rack))
        latencies = [250 + 10 * i for i in range(args.runs)]
        campaign = {"name": "overhead", "testbed": str(rack_file),
                    "workloads": [{"name": args.workload, "params": params}],
                    "matrix": {"mb0.latency_ns": latencies}}
        file = Path(tmp) / "campaign.yaml"
        file.write_text(yaml.safe_dump(campaign))
        try:
            t0 = time.monotonic()
            testbed.up(rack_file)
            print(f"testbed up in {time.monotonic() - t0:.1f} s (not counted)", flush=True)
            out = execute.run_campaign(file, Path(tmp) / "out")
            with Store(Path(tmp) / "out") as store:
                runs = store.runs()
        finally:
            if not args.keep:
                testbed.down(NAME)
    per_run = (out.wall_s - out.workload_s) / max(out.executed, 1)
    walls = sorted(r["finished"] - r["started"] for r in runs)
    own = sorted(r["workload_s"] or 0.0 for r in runs)
    print(f"{out.executed} runs of {args.workload} ({', '.join(f'{s} {n}' for s, n in out.statuses.items())})")
    print(f"campaign wall {out.wall_s:.1f} s, workloads' own time {out.workload_s:.1f} s")
    print(f"per run: wall median {walls[len(walls) // 2]:.2f} s, workload median {own[len(own) // 2]:.2f} s")
    print(f"orchestration overhead: {per_run:.3f} s per run (target: at most 0.5 s); "
          f"{out.overhead(with_steps=True):.3f} s not counting the workload's own setup and teardown")
    return 0


if __name__ == "__main__":
    sys.exit(main())
