"""The tidy table and its CSV and Parquet files, on a synthetic campaign (tests/unit/synthetic_store.py)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from synthetic_store import FAILED_ID, TIMEOUT_ID, build

from orchestrator.errors import StateError
from orchestrator.results import arrow_column, export, tidy, write_csv, write_parquet

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
