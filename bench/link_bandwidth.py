#!/usr/bin/env python3
"""Configured link bandwidth against what a guest streams: one table, never asserted.

    .venv/bin/python bench/link_bandwidth.py [--caps 0,0.5,1,2] [--threads 1,2] [--seconds 4]

Brings up a one-blade testbed (2 vCPUs, 1G local, 1G of mb0 as node 1; named
bench-link), and for each cap (GB/s, 0 = unlimited) and thread count runs the
project's probe `ddc-stream -m lines` under `numactl --membind=1`: every
thread reads one word of each 64-byte line of its share of 256 MiB, so the
link carries lines and the probe counts 64 bytes per line. The cap is changed
through the plugin's control socket between runs (no reboot); the extra
latency stays 0, so only the link limits the stream. The plugin's own queueing
time for the run is printed next to the guest's GB/s.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orchestrator import guest, plugin, testbed  # noqa: E402

NAME = "bench-link"
LOCAL_NS = 100
RACK = {
    "name": NAME, "accel": "tcg", "mode": "inject", "local_latency_ns": LOCAL_NS,
    "memory_blades": [{"name": "mb0", "size": "1G", "latency_ns": LOCAL_NS}],
    "compute_blades": [{"name": "cb0", "vcpus": 2, "memory": "1G", "remote": [{"blade": "mb0", "size": "1G"}]}],
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--caps", default="0,0.5,1,2", help="GB/s, comma-separated; 0 = unlimited")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--seconds", type=float, default=4)
    args = ap.parse_args()
    caps = [float(c) for c in args.caps.split(",")]
    threads = [int(t) for t in args.threads.split(",")]

    print(f"{'cap GB/s':>8} {'threads':>7} {'guest GB/s':>10} {'of cap':>7} {'queue s':>8}")
    with testbed.running(RACK) as st:
        conn = guest.connect(testbed.endpoint(st, "cb0"))
        with plugin.Control(st.plugin_socket("cb0")) as ctl:
            for cap in caps:
                for n in threads:
                    ctl.request("set_link", blade="mb0", latency_ns=LOCAL_NS, bandwidth_gbps=cap)
                    ctl.request("reset")
                    out = guest.run(conn, f"numactl --membind=1 ddc-stream -t {n} -s 256M "
                                          f"-d {args.seconds:g} -m lines", timeout=600, blade="cb0").stdout
                    queue = sum(b["queue_ns"] for b in ctl.stats()["blades"]) / 1e9
                    m = re.search(r"^threads=\d+ .* gbps=([\d.]+)$", out, re.M)
                    if not m:
                        print(out, file=sys.stderr)
                        return 1
                    gbps = float(m.group(1))
                    share = f"{100 * gbps / cap:6.1f}%" if cap else "      -"
                    print(f"{cap:8g} {n:7d} {gbps:10.3f} {share:>7} {queue:8.2f}", flush=True)
        conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
