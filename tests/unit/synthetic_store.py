"""A small synthetic campaign in a store, shared by test_results and test_report.

Two workloads (stream: triad_mb_s, better higher; sysbench: latency_ms, better
lower, plus events and a metric named like a parameter), 2 placements x 3
latencies (``mb0.latency_ns``) x 2 repetitions, all ok; then one failed stream
run and one timed-out sysbench run. Only stream runs have plugin statistics
(levels, nodes, hierarchy); two stream runs have samples. Values follow simple
formulas so that tests can work out expected figures by hand:

    stream   triad_mb_s = BASE[placement] - latency + 10 * rep      (BASE local 3000, remote 2000)
             amat_ns    = 2 + latency / 100 + rep; l1d hits 450 + 50 * rep, misses 50
    sysbench latency_ms = OFFSET[placement] + latency / 100 + rep / 10  (OFFSET local 0.5, remote 1)

``paced=True`` makes it a paced campaign: every run at dilation DILATION
(stream's at ``stream_dilation`` if given) with a lag of LAG of its model time,
but LAGGED_ID at LAGGED_LAG (over pacing.LAG_LIMIT). The metrics above are then
what the guest measured: triad_mb_s is a rate (x k in model time), latency_ms a
duration (/ k), events and threads have no unit (unchanged).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestrator.store import RunRecord, Store

LATENCIES = (100, 200, 400)
PLACEMENTS = ("local", "remote")
BASE = {"local": 3000, "remote": 2000}
OFFSET = {"local": 0.5, "remote": 1.0}
LEVELS = ("l1d", "l2", "llc")
FAILED_ID = "stream-remote-400-r2"
TIMEOUT_ID = "sysbench-local-100-r2"
ERROR = "exit code 139: segfault in <main> & friends"
DILATION = 30.0
LAG = 0.002  # 0.2 % of model time: within pacing.LAG_LIMIT
LAGGED_ID = "sysbench-remote-400-r1"
LAGGED_LAG = 0.034


def run_id(workload: str, placement: str, latency: int, rep: int) -> str:
    return f"{workload}-{placement}-{latency}-r{rep}"


def _hierarchy(latency: int, rep: int) -> dict[str, Any]:
    return {"ok": True, "mode": "inject", "blades": [], "vcpus": [],
            "total": {"insns": 1000, "loads": 300, "stores": 200,
                      "levels": {"l1d": {"hits": 450, "misses": 50}, "l2": {"hits": 30, "misses": 20},
                                 "llc": {"hits": 15, "misses": 5}},
                      "nodes": [{"node": 0, "accesses": 400, "memory": 3}, {"node": 1, "accesses": 100, "memory": 2}],
                      "injected_ns": 1000 * latency + rep, "modelled_stall_ns": 900 * latency + rep}}


def _stream(seq: int, placement: str, latency: int, rep: int) -> RunRecord:
    amat = 2 + latency / 100 + rep
    return RunRecord(
        run_id=run_id("stream", placement, latency, rep), seq=seq, workload="stream", rep=rep,
        params={"placement": placement, "mb0.latency_ns": latency, "threads": 2, "scale": 1},
        status="ok", blade="cb0", command="stream", started=1000.0 + seq, finished=1000.5 + seq,
        exit_code=0, workload_s=0.25 * (seq + 1),
        metrics=[("triad_mb_s", BASE[placement] - latency + 10 * rep, "MB/s", "higher")],
        hierarchy=_hierarchy(latency, rep),
        levels=[("l1d", 450 + 50 * rep, 50, 50 / (500 + 50 * rep), 1.0, amat),
                ("l2", 30, 20, 0.4, 4.0, 10.0 + latency / 10), ("llc", 15, 5, 0.25, 15.0, 20.0 + latency / 5)],
        nodes=[(0, 400, 3, 100.0), (1, 100, 2, float(latency))],
    )


def _sysbench(seq: int, placement: str, latency: int, rep: int) -> RunRecord:
    ms = OFFSET[placement] + latency / 100 + rep / 10
    return RunRecord(
        run_id=run_id("sysbench", placement, latency, rep), seq=seq, workload="sysbench", rep=rep,
        params={"placement": placement, "mb0.latency_ns": latency, "threads": 4, "size": "1G", "scale": 1.5},
        status="ok", blade="cb0", command="sysbench", started=2000.0 + seq, finished=2001.0 + seq,
        exit_code=0, workload_s=1.0,
        metrics=[("latency_ms", ms, "ms", "lower"), ("events", 1000 / ms, "", "higher"),
                 ("threads", 4.0, "", "higher")],
    )


# (t, source, name, value): injected_ns grows 1000/s, numa_hit grows 50/s, free pages go up and down
SAMPLES = [(t, "plugin", "injected_ns", 1000.0 * t) for t in (0.0, 1.0, 2.0, 3.0)] \
    + [(t, "guest", "numa_hit", 10.0 + 50.0 * t) for t in (0.0, 1.0, 2.0, 3.0)] \
    + [(t, "guest", "nr_free_pages", v) for t, v in ((0.0, 5.0), (1.0, 3.0), (2.0, 4.0), (3.0, 2.0))]


def _pace(r: RunRecord, dilation: float) -> None:
    r.dilation = dilation
    r.lag_fraction = LAGGED_LAG if r.run_id == LAGGED_ID else LAG
    r.lag_ns = round(r.lag_fraction * (r.finished - r.started) * 1e9 / dilation)


def records(paced: bool = False, stream_dilation: float | None = None) -> list[RunRecord]:
    out = []
    for make, workload in ((_stream, "stream"), (_sysbench, "sysbench")):
        for placement in PLACEMENTS:
            for latency in LATENCIES:
                for rep in (0, 1):
                    out.append(make(len(out), placement, latency, rep))
        if workload == "stream":
            failed = RunRecord(
                run_id=FAILED_ID, seq=len(out), workload="stream", rep=2,
                params={"placement": "remote", "mb0.latency_ns": 400, "threads": 2, "scale": 1},
                status="failed", blade="cb0", command="stream", started=1100.0, finished=1101.0, exit_code=139,
                error=ERROR)
            out.append(failed)
    out.append(RunRecord(
        run_id=TIMEOUT_ID, seq=len(out), workload="sysbench", rep=2,
        params={"placement": "local", "mb0.latency_ns": 100, "threads": 4, "size": "1G", "scale": 1.5},
        status="timeout", blade="cb0", command="sysbench", started=3000.0, finished=3120.0,
        error="no answer after 120 s"))
    out[2].samples = list(SAMPLES)  # stream-local-200-r0: the first ok run with samples
    out[5].samples = [(0.0, "guest", "numa_miss", 1.0), (1.0, "guest", "numa_miss", 3.0)]
    if paced:
        for r in out:
            _pace(r, stream_dilation if stream_dilation is not None and r.workload == "stream" else DILATION)
    return out


def build(directory: Path, meta: dict[str, str] | None = None, paced: bool = False,
          stream_dilation: float | None = None) -> Store:
    store = Store(directory)
    for r in reversed(records(paced, stream_dilation)):  # saved out of order: readers must sort by seq
        store.save(r)
    store.set_meta(**(meta if meta is not None else
                      {"name": "synthetic", "created": "2024-05-01T12:00:00", "primary.sysbench": "latency_ms",
                       "campaign_file": "/campaigns/synthetic.yaml",
                       "campaign_yaml": "name: synthetic\nworkloads: [stream, sysbench]\n"}))
    return store
