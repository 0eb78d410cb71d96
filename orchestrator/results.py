"""The tidy table: one row per run, one column per variable, for pandas, R or a spreadsheet.

The store keeps a run's parameters as JSON and its metrics, cache levels and
plugin totals in tables of their own; analysis wants them side by side. A row
holds, in this order::

    run_id, status, workload, rep,
    <every parameter, sorted>            None where a run lacks it
    <every metric, sorted>               prefixed ``metric.`` where the name is taken
    workload_s, setup_s, teardown_s, exit_code, started, finished,
    dilation, lag_fraction, lagged,      when some run was paced (mode: paced):
    <every metric>.model, workload_s.model   see below
    <level>.miss_ratio ..., amat_ns      when some run has cache levels (plugin runs)
    injected_ns, modelled_stall_ns       when some run has plugin statistics

A paced guest runs k (its ``dilation``) times slower than the model machine, so
what it measures is k times the model's value: ``<metric>.model`` is the metric
in model time (:func:`to_model`: a rate times k, a duration divided by k, a
metric that is neither as it is), and so is ``workload_s.model``; a run not
paced keeps its values there. ``lagged`` is True when the run's worst vCPU
fell behind by more than ``pacing.LAG_LIMIT`` of its model time (its timings
then depend on the host), False when paced within it, None when not paced.
A parameter named like one of these columns is prefixed ``param.``.

Every row has every column, so the rows write as they are to CSV
(:func:`write_csv`) or Parquet (:func:`write_parquet`). This module also holds
the readers for the tables :class:`~orchestrator.store.Store` has none for
(levels, plugin totals, samples), which the report shares.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .pacing import is_lagged
from .store import Store

HEAD = ("run_id", "status", "workload", "rep")
TAIL = ("workload_s", "setup_s", "teardown_s", "exit_code", "started", "finished")
PACED = ("dilation", "lag_fraction", "lagged")
MODEL = ".model"  # suffix of a column in model time
WORKLOAD_MODEL = "workload_s" + MODEL
PLUGIN_TOTALS = ("injected_ns", "modelled_stall_ns")


# -- model time ------------------------------------------------------------------------------------


class Scaling(StrEnum):
    """How a value a paced guest measured relates to model time."""

    RATE = "rate"  # per second: the guest's second is 1/k of a model second, so times k
    DURATION = "duration"  # divided by k


DURATION_UNITS = frozenset({"s", "ms", "us", "µs", "ns"})


def time_scaling(unit: str) -> Scaling | None:
    """``rate`` for a unit per second (GB/s, MiB/s, ops/s, req/s), ``duration`` for a time (s, ms, us,
    ns), None for anything else (a count such as ops, or no unit)."""
    unit = unit.strip()
    if unit in DURATION_UNITS:
        return Scaling.DURATION
    if unit.endswith("/s") and len(unit) > len("/s"):
        return Scaling.RATE
    return None


def to_model(value: float, unit: str, dilation: float | None) -> float:
    """A value measured in a guest paced at ``dilation`` = k, in model time: a rate times k, a duration
    divided by k, anything else as it is. A run not paced (None) keeps its value."""
    if dilation is None:
        return value
    if dilation <= 0:
        raise ValueError(f"a dilation is above 0, not {dilation}")
    scaling = time_scaling(unit)
    if scaling is Scaling.RATE:
        return value * dilation
    if scaling is Scaling.DURATION:
        return value / dilation
    return value


def any_paced(runs: Iterable[dict[str, Any]]) -> bool:
    return any(r["dilation"] is not None for r in runs)


def model_metrics(runs: Iterable[dict[str, Any]], metrics: dict[str, dict[str, float]],
                  info: dict[str, tuple[str, str]]) -> dict[str, dict[str, float]]:
    """run_id -> name -> value in model time (:func:`to_model` at each run's own dilation), from
    :meth:`Store.metrics` and :meth:`Store.metric_info`."""
    dilation = {r["run_id"]: r["dilation"] for r in runs}
    return {run_id: {name: to_model(v, info.get(name, ("", ""))[0], dilation.get(run_id))
                     for name, v in values.items()}
            for run_id, values in metrics.items()}


# -- readers for tables Store has no method for ----------------------------------------------------


@dataclass(frozen=True)
class LevelRow:
    run_id: str
    level: str
    position: int  # 0 is the level nearest the CPU
    hits: int
    misses: int
    miss_ratio: float
    hit_ns: float
    amat_ns: float


def levels(store: Store) -> dict[str, list[LevelRow]]:
    """run_id -> its cache levels, nearest the CPU first. Runs without the plugin have none."""
    out: dict[str, list[LevelRow]] = {}
    cur = store.db.execute("SELECT run_id, level, position, hits, misses, miss_ratio, hit_ns, amat_ns "
                           "FROM levels ORDER BY run_id, position")
    for row in cur.fetchall():
        out.setdefault(row[0], []).append(LevelRow(*row))
    return out


def plugin_totals(store: Store) -> dict[str, dict[str, Any]]:
    """run_id -> the ``total`` part of the plugin's statistics for that run."""
    out: dict[str, dict[str, Any]] = {}
    for run_id, stats in store.db.execute("SELECT run_id, stats FROM hierarchy").fetchall():
        out[run_id] = json.loads(stats).get("total", {})
    return out


def sampled_runs(store: Store) -> set[str]:
    return {r for (r,) in store.db.execute("SELECT DISTINCT run_id FROM samples").fetchall()}


def samples(store: Store, run_id: str) -> dict[tuple[str, str], list[tuple[float, float]]]:
    """(source, name) -> [(t, value), ...] in time order, for one run."""
    out: dict[tuple[str, str], list[tuple[float, float]]] = {}
    cur = store.db.execute("SELECT source, name, t, value FROM samples WHERE run_id = ? ORDER BY source, name, t",
                           (run_id,))
    for source, name, t, value in cur.fetchall():
        out.setdefault((source, name), []).append((t, value))
    return out


# -- the tidy table --------------------------------------------------------------------------------


def _level_names(by_run: dict[str, list[LevelRow]]) -> list[str]:
    """Every level seen, nearest the CPU first (runs of one campaign share one hierarchy)."""
    position: dict[str, int] = {}
    for rows in by_run.values():
        for lv in rows:
            position[lv.level] = min(lv.position, position.get(lv.level, lv.position))
    return sorted(position, key=lambda name: (position[name], name))


def _param_column(name: str, reserved: set[str]) -> str:
    return f"param.{name}" if name in reserved else name


def _metric_column(name: str, taken: set[str]) -> str:
    return f"metric.{name}" if name in taken else name


def _paced_cells(r: dict[str, Any], values: dict[str, float], metric_columns: dict[str, str],
                 info: dict[str, tuple[str, str]]) -> dict[str, Any]:
    """The paced columns of one run: its dilation and lag, and its metrics and workload_s in model time."""
    k = r["dilation"]
    cells: dict[str, Any] = {"dilation": k, "lag_fraction": r["lag_fraction"],
                             "lagged": is_lagged(k, r["lag_fraction"])}
    for m, column in metric_columns.items():
        v = values.get(m)
        cells[column + MODEL] = None if v is None else to_model(v, info.get(m, ("", ""))[0], k)
    cells[WORKLOAD_MODEL] = None if r["workload_s"] is None else to_model(r["workload_s"], "s", k)
    return cells


def tidy(store: Store) -> list[dict[str, Any]]:
    """One dict per run, in campaign order, every dict with the same keys in the same order."""
    runs = store.runs()
    metrics = store.metrics()
    info = store.metric_info()
    by_run = levels(store)
    totals = plugin_totals(store)
    paced = any_paced(runs)
    metric_names = sorted({m for values in metrics.values() for m in values})
    reserved = set(HEAD) | set(TAIL)
    if paced:  # a metric "x.model" beside "x" is renamed too
        reserved |= {*PACED, WORKLOAD_MODEL, *(m + MODEL for m in metric_names)}
    param_columns = {p: _param_column(p, reserved) for p in sorted({k for r in runs for k in r["params"]})}
    taken = reserved | set(param_columns.values())
    metric_columns = {m: _metric_column(m, taken) for m in metric_names}
    level_names = _level_names(by_run)
    rows = []
    for r in runs:
        row: dict[str, Any] = {c: r[c] for c in HEAD}
        for p, column in param_columns.items():
            row[column] = r["params"].get(p)
        for m, column in metric_columns.items():
            row[column] = metrics.get(r["run_id"], {}).get(m)
        for c in TAIL:
            row[c] = r[c]
        if paced:
            row.update(_paced_cells(r, metrics.get(r["run_id"], {}), metric_columns, info))
        if level_names:
            mine = {lv.level: lv for lv in by_run.get(r["run_id"], [])}
            for name in level_names:
                row[f"{name}.miss_ratio"] = mine[name].miss_ratio if name in mine else None
            first = by_run.get(r["run_id"])
            row["amat_ns"] = first[0].amat_ns if first else None
        if totals:
            total = totals.get(r["run_id"], {})
            for c in PLUGIN_TOTALS:
                row[c] = total.get(c)
        rows.append(row)
    return rows


def columns(rows: list[dict[str, Any]]) -> list[str]:
    return list(rows[0]) if rows else [*HEAD, *TAIL]


# -- writers ---------------------------------------------------------------------------------------


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _text(value: Any) -> str | None:
    """A value as text for a string column: lists and objects (from parameters) as JSON."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float | bool):
        return str(value)
    return json.dumps(value, sort_keys=True)


def write_csv(rows: list[dict[str, Any]], path: str | Path) -> None:
    """Header = the columns; None is an empty cell; lists and objects are JSON."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns(rows))
        for row in rows:
            writer.writerow(["" if v is None else v if _is_scalar(v) else _text(v) for v in row.values()])


def arrow_column(values: list[Any]) -> pa.Array:
    """One column with its type read off its values.

    Only ints -> int64, ints and floats -> float64, only bools -> bool; anything
    else (strings, mixtures with strings, lists) -> string; nothing -> string nulls.
    """
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return pa.array(values, type=pa.bool_())
    numbers = [v for v in present if isinstance(v, int | float) and not isinstance(v, bool)]
    if present and len(numbers) == len(present):
        if all(isinstance(v, int) for v in numbers):
            return pa.array(values, type=pa.int64())
        return pa.array([None if v is None else float(v) for v in values], type=pa.float64())
    return pa.array([_text(v) for v in values], type=pa.string())


def write_parquet(rows: list[dict[str, Any]], path: str | Path) -> None:
    names = columns(rows)
    table = pa.table({name: arrow_column([row[name] for row in rows]) for name in names})
    pq.write_table(table, path)


def export(directory: str | Path, csv: str | Path | None = None, parquet: str | Path | None = None) -> int:
    """Write the tidy table of the campaign in ``directory``; returns the number of rows."""
    with Store.open_existing(directory) as store:
        rows = tidy(store)
    if csv is not None:
        write_csv(rows, csv)
    if parquet is not None:
        write_parquet(rows, parquet)
    return len(rows)
