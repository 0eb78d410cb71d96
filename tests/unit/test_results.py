"""The tidy table and its CSV and Parquet files, on a synthetic campaign (tests/unit/synthetic_store.py)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from synthetic_store import DILATION, FAILED_ID, LAG, LAGGED_ID, LAGGED_LAG, TIMEOUT_ID, build

from orchestrator.errors import StateError
from orchestrator.pacing import LAG_LIMIT
from orchestrator.results import (
    arrow_column,
    export,
    is_lagged,
    tidy,
    time_scaling,
    to_model,
    write_csv,
    write_parquet,
)
from orchestrator.store import RunRecord, Store

TAIL_NAMES = ["workload_s", "setup_s", "teardown_s", "exit_code", "started", "finished"]
COLUMNS = ["run_id", "status", "workload", "rep",
           "mb0.latency_ns", "placement", "scale", "size", "threads",
           "events", "latency_ms", "metric.threads", "triad_mb_s",
           "workload_s", "setup_s", "teardown_s", "exit_code", "started", "finished",
           "l1d.miss_ratio", "l2.miss_ratio", "llc.miss_ratio", "amat_ns",
           "injected_ns", "modelled_stall_ns"]


@pytest.fixture
def rows(tmp_path: Path) -> list[dict[str, Any]]:
    with build(tmp_path) as store:
        return tidy(store)


def by_id(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["run_id"]: r for r in rows}


def test_one_row_per_run_in_campaign_order(rows: list[dict[str, Any]]) -> None:
    assert len(rows) == 26
    assert rows[0]["run_id"] == "stream-local-100-r0"
    assert rows[12]["run_id"] == FAILED_ID and rows[12]["status"] == "failed"
    assert rows[-1]["run_id"] == TIMEOUT_ID and rows[-1]["status"] == "timeout"
    assert [r["rep"] for r in rows[:4]] == [0, 1, 0, 1]


def test_columns_in_order_and_the_same_for_every_row(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        assert list(row) == COLUMNS


def test_values_land_in_their_row(rows: list[dict[str, Any]]) -> None:
    stream = by_id(rows)["stream-remote-200-r1"]
    assert stream["triad_mb_s"] == 2000 - 200 + 10
    assert stream["mb0.latency_ns"] == 200 and stream["placement"] == "remote" and stream["threads"] == 2
    assert stream["size"] is None and stream["latency_ms"] is None and stream["metric.threads"] is None
    assert stream["l2.miss_ratio"] == 0.4 and stream["amat_ns"] == 2 + 2 + 1
    assert stream["injected_ns"] == 200_001 and stream["modelled_stall_ns"] == 180_001
    sysbench = by_id(rows)["sysbench-remote-400-r1"]
    assert sysbench["latency_ms"] == pytest.approx(1 + 4 + 0.1)
    assert sysbench["metric.threads"] == 4.0 and sysbench["threads"] == 4 and sysbench["size"] == "1G"
    assert sysbench["triad_mb_s"] is None and sysbench["amat_ns"] is None and sysbench["l1d.miss_ratio"] is None
    assert sysbench["injected_ns"] is None


def test_failed_and_timeout_rows_keep_what_there_is(rows: list[dict[str, Any]]) -> None:
    failed = by_id(rows)[FAILED_ID]
    assert failed["exit_code"] == 139 and failed["triad_mb_s"] is None and failed["workload_s"] is None
    assert failed["placement"] == "remote" and failed["started"] == 1100.0
    timeout = by_id(rows)[TIMEOUT_ID]
    assert timeout["exit_code"] is None and timeout["finished"] == 3120.0


def test_no_hierarchy_columns_without_plugin(tmp_path: Path) -> None:
    with build(tmp_path) as store:
        store.db.execute("DELETE FROM levels")
        store.db.execute("DELETE FROM hierarchy")
        rows = tidy(store)
    assert list(rows[0]) == COLUMNS[:COLUMNS.index("l1d.miss_ratio")]


def test_csv_round_trip(rows: list[dict[str, Any]], tmp_path: Path) -> None:
    path = tmp_path / "runs.csv"
    write_csv(rows, path)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        back = list(reader)
    assert reader.fieldnames == COLUMNS
    assert len(back) == 26
    row = by_id(back)["stream-remote-200-r1"]
    assert float(row["triad_mb_s"]) == 1810.0 and row["size"] == "" and row["latency_ms"] == ""
    assert row["placement"] == "remote" and int(row["mb0.latency_ns"]) == 200
    assert float(by_id(back)["sysbench-remote-400-r1"]["latency_ms"]) == by_id(rows)["sysbench-remote-400-r1"][
        "latency_ms"]


def test_parquet_round_trip_types(rows: list[dict[str, Any]], tmp_path: Path) -> None:
    path = tmp_path / "runs.parquet"
    write_parquet(rows, path)
    table = pq.read_table(path)
    assert table.column_names == COLUMNS
    types = {name: table.schema.field(name).type for name in COLUMNS}
    assert types["rep"] == pa.int64() and types["mb0.latency_ns"] == pa.int64()
    assert types["exit_code"] == pa.int64()  # with nulls
    assert types["scale"] == pa.float64()  # 1 for stream, 1.5 for sysbench
    assert types["placement"] == pa.string() and types["size"] == pa.string()
    assert types["triad_mb_s"] == pa.float64() and types["amat_ns"] == pa.float64()
    assert table.column("triad_mb_s").to_pylist() == [r["triad_mb_s"] for r in rows]
    assert table.column("scale").to_pylist()[0] == 1.0 and table.column("size").to_pylist()[0] is None


def test_arrow_column_types() -> None:
    assert arrow_column([1, None, 2.5]).type == pa.float64()
    assert arrow_column([1, None, 2.5]).to_pylist() == [1.0, None, 2.5]
    assert arrow_column([None, None]).type == pa.string()
    assert arrow_column([None, None]).null_count == 2
    assert arrow_column(["a", 1]).to_pylist() == ["a", "1"]
    assert arrow_column([True, None]).type == pa.bool_()
    assert arrow_column([[1, 2], None]).to_pylist() == ["[1, 2]", None]


def test_export_writes_both(tmp_path: Path) -> None:
    build(tmp_path).close()
    n = export(tmp_path, csv=tmp_path / "t.csv", parquet=tmp_path / "t.parquet")
    assert n == 26
    assert pq.read_table(tmp_path / "t.parquet").num_rows == 26
    assert (tmp_path / "t.csv").read_text().splitlines()[0] == ",".join(COLUMNS)


def test_export_needs_a_store(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="no results.sqlite"):
        export(tmp_path / "nothing", csv=tmp_path / "t.csv")


def test_pandas_reads_both(rows: list[dict[str, Any]], tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    write_csv(rows, tmp_path / "t.csv")
    write_parquet(rows, tmp_path / "t.parquet")
    for frame in (pd.read_csv(tmp_path / "t.csv"), pd.read_parquet(tmp_path / "t.parquet")):
        assert list(frame.columns) == COLUMNS and len(frame) == 26
        assert frame.loc[frame.run_id == FAILED_ID, "status"].item() == "failed"


# -- paced mode ------------------------------------------------------------------------------------

PACED_COLUMNS = [*COLUMNS[:COLUMNS.index("l1d.miss_ratio")],
                 "dilation", "lag_fraction", "lagged",
                 "events.model", "latency_ms.model", "metric.threads.model", "triad_mb_s.model", "workload_s.model",
                 *COLUMNS[COLUMNS.index("l1d.miss_ratio"):]]


@pytest.mark.parametrize(("unit", "scaling"), [
    ("GB/s", "rate"), ("MiB/s", "rate"), ("MB/s", "rate"), ("ops/s", "rate"), ("req/s", "rate"),
    ("s", "duration"), ("ms", "duration"), ("us", "duration"), ("ns", "duration"),
    ("ops", None), ("", None), ("/s", None), ("ms/op", None)])
def test_time_scaling_of_every_unit(unit: str, scaling: str | None) -> None:
    assert time_scaling(unit) == scaling


def test_to_model() -> None:
    assert to_model(100.0, "MiB/s", 30) == 3000.0  # the guest's second is 1/30 of a model second
    assert to_model(2.5, "GB/s", 30) == 75.0 and to_model(40_000.0, "req/s", 30) == 1_200_000.0
    assert to_model(30.0, "ms", 30) == 1.0 and to_model(6.0, "s", 30) == 0.2
    assert to_model(900.0, "ns", 30) == 30.0 and to_model(60.0, "us", 30) == 2.0
    assert to_model(7.0, "ops", 30) == 7.0 and to_model(7.0, "", 30) == 7.0
    for unit in ("MiB/s", "ms", "ops", ""):
        assert to_model(7.0, unit, None) == 7.0, "a run not paced keeps its value"
    with pytest.raises(ValueError, match="not 0"):
        to_model(1.0, "s", 0)


def test_is_lagged() -> None:
    assert is_lagged(30.0, LAG_LIMIT * 1.01) is True
    assert is_lagged(30.0, LAG_LIMIT) is False and is_lagged(30.0, 0.0) is False
    assert is_lagged(None, None) is None


@pytest.fixture
def paced_rows(tmp_path: Path) -> list[dict[str, Any]]:
    with build(tmp_path, paced=True) as store:
        return tidy(store)


def test_paced_columns(paced_rows: list[dict[str, Any]]) -> None:
    for row in paced_rows:
        assert list(row) == PACED_COLUMNS


def test_paced_values_in_model_time(paced_rows: list[dict[str, Any]]) -> None:
    stream = by_id(paced_rows)["stream-remote-200-r1"]
    assert stream["triad_mb_s"] == 1810 and stream["triad_mb_s.model"] == 1810 * DILATION  # MB/s: x k
    assert stream["workload_s.model"] == pytest.approx(stream["workload_s"] / DILATION)
    assert stream["latency_ms.model"] is None and stream["events.model"] is None
    sysbench = by_id(paced_rows)["sysbench-remote-400-r1"]
    assert sysbench["latency_ms.model"] == pytest.approx((1 + 4 + 0.1) / DILATION)  # ms: / k
    assert sysbench["events.model"] == sysbench["events"] == pytest.approx(1000 / 5.1)  # no unit: as measured
    assert sysbench["metric.threads.model"] == 4.0
    assert sysbench["dilation"] == DILATION
    assert by_id(paced_rows)[FAILED_ID]["workload_s.model"] is None


def test_lagged(paced_rows: list[dict[str, Any]]) -> None:
    assert [r["run_id"] for r in paced_rows if r["lagged"]] == [LAGGED_ID]
    assert by_id(paced_rows)[LAGGED_ID]["lag_fraction"] == LAGGED_LAG
    others = [r for r in paced_rows if r["run_id"] != LAGGED_ID]
    assert {r["lagged"] for r in others} == {False} and {r["lag_fraction"] for r in others} == {LAG}


def test_a_run_not_paced_in_a_paced_campaign(tmp_path: Path) -> None:
    with build(tmp_path, paced=True) as store:
        [stream] = [r for r in store.runs() if r["run_id"] == "stream-local-100-r0"]
        store.db.execute("UPDATE runs SET dilation = NULL, lag_ns = NULL, lag_fraction = NULL "
                         "WHERE run_id = 'stream-local-100-r0'")
        row = by_id(tidy(store))["stream-local-100-r0"]
    assert stream["dilation"] == DILATION
    assert row["dilation"] is None and row["lag_fraction"] is None and row["lagged"] is None
    assert row["triad_mb_s.model"] == row["triad_mb_s"] == 2900 and row["workload_s.model"] == row["workload_s"]


def test_paced_names_do_not_collide(tmp_path: Path) -> None:
    """Parameters named like a paced column get param., metrics metric., as for the other columns."""
    with Store(tmp_path) as store:
        store.save(RunRecord(run_id="r", seq=0, workload="w", rep=0, params={"dilation": 5, "x.model": 1},
                             status="ok", blade="cb0", command="w", started=0.0, finished=1.0, workload_s=3.0,
                             dilation=10.0, lag_ns=0, lag_fraction=0.0,
                             metrics=[("x", 2.0, "MiB/s", "higher"), ("lagged", 1.0, "", "higher"),
                                      ("x.model", 4.0, "s", "lower")]))
        [row] = tidy(store)
    assert list(row) == ["run_id", "status", "workload", "rep", "param.dilation", "param.x.model",
                         "metric.lagged", "x", "metric.x.model", *TAIL_NAMES, "dilation", "lag_fraction", "lagged",
                         "metric.lagged.model", "x.model", "metric.x.model.model", "workload_s.model"]
    assert row["param.dilation"] == 5 and row["dilation"] == 10.0 and row["lagged"] is False
    assert row["x.model"] == 20.0 and row["metric.x.model"] == 4.0 and row["metric.x.model.model"] == 0.4
    assert row["workload_s.model"] == 0.3


def test_paced_parquet_types(paced_rows: list[dict[str, Any]], tmp_path: Path) -> None:
    write_parquet(paced_rows, tmp_path / "t.parquet")
    table = pq.read_table(tmp_path / "t.parquet")
    assert table.schema.field("lagged").type == pa.bool_() and table.schema.field("dilation").type == pa.float64()
    assert table.column("lagged").to_pylist().count(True) == 1
