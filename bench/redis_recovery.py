#!/usr/bin/env python3
"""Recovering redis after its blade dies: stealing its memory region, against
re-sending the data from the client.

    .venv/bin/python bench/redis_recovery.py [--keys 20000] [--runs 3]

Each run: redis-server on cb0 keeps its append-only file (``appendfsync
always``) on a region mounted as a file system (``--as fs``), and ``--keys``
keys are written. Then cb0's QEMU is killed (SIGKILL, no unmount), and the clock
starts.

- steal: the region is stolen for cb1, and redis-server starts there on the same
  file; the clock stops when it answers and holds every key.
- re-send: redis-server starts on cb1 on its own disk with the same durability,
  and the client writes every key again; the clock stops when the last is
  acknowledged.

cb0 is restarted between runs. Prints figures only: nothing here is asserted.
The testbed (the example rack, named bench-recovery) is brought up first and
down at the end.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orchestrator import rack, testbed  # noqa: E402
from orchestrator.hypervisor import Hypervisor  # noqa: E402

NAME = "bench-recovery"


def redis(directory: str, port: int) -> str:
    return (f"mkdir -p {directory} && redis-server --port {port} --daemonize yes --dir {directory} "
            f"--appendonly yes --appendfsync always --save '' && "
            f"until redis-cli -p {port} ping 2>/dev/null | grep -q PONG; do sleep 0.05; done")


def load(keys: int, port: int) -> str:
    """The client's writes, as redis protocol inline commands piped in one stream."""
    return (f"seq 1 {keys} | awk '{{printf \"SET key:%d value:%d\\r\\n\", $1, $1}}' | "
            f"redis-cli -p {port} --pipe >/dev/null")


def sh(st: testbed.TestbedState, blade: str, command: str) -> str:
    argv = testbed.endpoint(st, blade).ssh_argv("sh", "-c", command)
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def kill_qemu(st: testbed.TestbedState, blade: str) -> float:
    with Hypervisor(st.uri) as hv:
        pid = hv.qemu_pid(st.blades[blade].domain)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    return time.monotonic()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=20000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()

    data = yaml.safe_load((ROOT / "examples" / "rack.yaml").read_text())
    data["name"] = NAME
    steal_s, resend_s = [], []
    with testbed.running(data) as st:
        for run in range(args.runs):
            st = testbed.load_up(NAME)
            region = f"aof{run}"
            rack.attach(NAME, "cb0", memory_blade="mb0", size="256M", region=region, kind="fs")
            where = f"/run/ddc/regions/{region}"
            sh(st, "cb0", f"{redis(where, 6400)} && {load(args.keys, 6400)}")
            assert sh(st, "cb0", "redis-cli -p 6400 dbsize").strip() == str(args.keys)

            killed = kill_qemu(st, "cb0")
            rack.steal(NAME, region, "cb1")
            sh(st, "cb1", redis(where, 6400))
            steal_s.append(time.monotonic() - killed)
            assert sh(st, "cb1", "redis-cli -p 6400 dbsize").strip() == str(args.keys)

            # The same loss, recovered the other way: a fresh server, the client sends everything again.
            start = time.monotonic()
            sh(st, "cb1", f"{redis(f'/var/lib/ddc-bench-{run}', 6401)} && {load(args.keys, 6401)}")
            resend_s.append(time.monotonic() - start)
            assert sh(st, "cb1", "redis-cli -p 6401 dbsize").strip() == str(args.keys)

            sh(st, "cb1", "redis-cli -p 6400 shutdown nosave; redis-cli -p 6401 shutdown nosave; "
                          f"rm -rf /var/lib/ddc-bench-{run}; true")
            rack.detach(NAME, region)
            testbed.restart_blade(NAME, "cb0")
            print(f"run {run + 1}: steal {steal_s[-1]:.2f} s (kill to serving), "
                  f"re-send {resend_s[-1]:.2f} s (fresh server + {args.keys} writes)", flush=True)
    print(f"\n{args.keys} keys, appendfsync always, {args.runs} runs")
    print(f"steal:   median {statistics.median(steal_s):.2f} s (kill -> redis serving every key on cb1)")
    print(f"re-send: median {statistics.median(resend_s):.2f} s (fresh redis on cb1 + the client writes again)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
