"""The results store: one SQLite database per campaign directory.

Every run is written in one transaction, at its end, so the database holds
complete runs only: a campaign killed half-way through a run has no trace of
that run, and resuming redoes it. The tables (all keyed by ``run_id``):

``runs``      one row per run: workload, repetition, parameters (JSON), status
              (``ok``, ``failed``, ``timeout``), times, exit code, the rendered
              command, full stdout and stderr, an error message if any, and for
              a paced run its dilation and lag (NULL for a run not paced)
``metrics``   the workload's metrics parsed from its output
``counters``  guest counters before and after the run: source ``vmstat``
              (node NULL), ``numastat`` and ``meminfo`` (per node); and libvirt's
              domain statistics (source ``domstats``)
``hierarchy`` the plugin's statistics for exactly that run: raw JSON, plus one
              row per cache level (``levels``) and per NUMA node (``nodes``)
``samples``   1-second time series while the run ran: source ``plugin`` or
              ``guest``, counter name, value, seconds since the run started
``meta``      the campaign: its name, file text, testbed file text, etc.

The database appears whole: it is made with every table under a temporary name
in the same directory and then published, so a reader (`ddc results`, `ddc
report`, a test polling a campaign that is starting) finds either no file or a
store with its schema, never one half made (see :func:`_create`).

A store made by an older ddc (``meta['schema_version']`` lower) still opens: a
writer (a resumed campaign) adds the columns it lacks in one transaction
(:meth:`Store._upgrade`), a reader changes nothing and reads them as NULL.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 2  # 2: runs.dilation, lag_ns, lag_fraction (paced mode)
DB_NAME = "results.sqlite"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id      TEXT PRIMARY KEY,
    seq         INTEGER NOT NULL,      -- position in the expanded campaign
    workload    TEXT NOT NULL,
    rep         INTEGER NOT NULL,      -- repetition, from 0
    params      TEXT NOT NULL,         -- JSON object: every parameter of the run
    status      TEXT NOT NULL CHECK (status IN ('ok', 'failed', 'timeout')),
    blade       TEXT NOT NULL,
    command     TEXT NOT NULL,
    exit_code   INTEGER,
    started     REAL NOT NULL,         -- unix time
    finished    REAL NOT NULL,
    workload_s  REAL,                  -- the command's own wall time, measured in the guest
    setup_s     REAL,                  -- the workload's setup steps, measured in the guest
    teardown_s  REAL,                  -- its teardown steps, likewise
    stdout      TEXT NOT NULL,
    stderr      TEXT NOT NULL,
    error       TEXT,
    -- schema 2 (paced mode; NULL for a run not paced), last so that ALTER TABLE adds them in this order
    dilation     REAL,                 -- k: the guest ran k times slower than the model machine
    lag_ns       INTEGER,              -- model ns the vCPUs fell behind beyond the plugin's catch-up window
    lag_fraction REAL                  -- the worst vCPU's lag as a share of its model time over the run
);
CREATE TABLE IF NOT EXISTS metrics (
    run_id TEXT NOT NULL REFERENCES runs(run_id), name TEXT NOT NULL, value REAL NOT NULL,
    unit TEXT NOT NULL DEFAULT '', better TEXT NOT NULL DEFAULT 'higher',
    PRIMARY KEY (run_id, name));
CREATE TABLE IF NOT EXISTS counters (
    run_id TEXT NOT NULL REFERENCES runs(run_id), source TEXT NOT NULL, node INTEGER,
    name TEXT NOT NULL, before REAL, after REAL, delta REAL);
CREATE INDEX IF NOT EXISTS counters_run ON counters(run_id);
CREATE TABLE IF NOT EXISTS hierarchy (run_id TEXT PRIMARY KEY REFERENCES runs(run_id), stats TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS levels (
    run_id TEXT NOT NULL REFERENCES runs(run_id), level TEXT NOT NULL, position INTEGER NOT NULL,
    hits INTEGER NOT NULL, misses INTEGER NOT NULL, miss_ratio REAL NOT NULL, hit_ns REAL NOT NULL,
    amat_ns REAL NOT NULL, PRIMARY KEY (run_id, level));
CREATE TABLE IF NOT EXISTS nodes (
    run_id TEXT NOT NULL REFERENCES runs(run_id), node INTEGER NOT NULL, accesses INTEGER NOT NULL,
    memory INTEGER NOT NULL, latency_ns REAL, PRIMARY KEY (run_id, node));
CREATE TABLE IF NOT EXISTS samples (
    run_id TEXT NOT NULL REFERENCES runs(run_id), t REAL NOT NULL, source TEXT NOT NULL,
    name TEXT NOT NULL, value REAL NOT NULL);
CREATE INDEX IF NOT EXISTS samples_run ON samples(run_id);
"""

# Columns of runs added after schema 1, with their types: an older store gets them by ALTER TABLE.
ADDED_RUN_COLUMNS = (("dilation", "REAL"), ("lag_ns", "INTEGER"), ("lag_fraction", "REAL"))
RUN_COLUMNS = ("run_id", "seq", "workload", "rep", "params", "status", "blade", "command", "exit_code", "started",
               "finished", "workload_s", "setup_s", "teardown_s", "stdout", "stderr", "error",
               *(name for name, _ in ADDED_RUN_COLUMNS))
# What runs() returns: every column but the outputs.
READ_COLUMNS = tuple(c for c in RUN_COLUMNS if c not in ("stdout", "stderr"))


@dataclass
class RunRecord:
    """Everything one run produced; :meth:`Store.save` writes it in one transaction."""

    run_id: str
    seq: int
    workload: str
    rep: int
    params: dict[str, Any]
    status: str
    blade: str
    command: str
    started: float
    finished: float
    exit_code: int | None = None
    workload_s: float | None = None
    setup_s: float | None = None
    teardown_s: float | None = None
    stdout: str = ""
    stderr: str = ""
    error: str | None = None
    # Paced mode (pacing.py): the run's k, and its lag (the worst vCPU's, over
    # the command); None for a run that was not paced.
    dilation: float | None = None
    lag_ns: int | None = None
    lag_fraction: float | None = None
    metrics: list[tuple[str, float, str, str]] = field(default_factory=list)  # name, value, unit, better
    counters: list[tuple[str, int | None, str, float | None, float | None]] = field(default_factory=list)
    hierarchy: dict[str, Any] | None = None  # the plugin's raw stats
    levels: list[tuple[str, int, int, float, float, float]] = field(default_factory=list)
    nodes: list[tuple[int, int, int, float | None]] = field(default_factory=list)
    samples: list[tuple[float, str, str, float]] = field(default_factory=list)  # t, source, name, value


class Store:
    """A campaign's store. ``Store(directory)`` opens it for writing and creates it
    if it does not exist (a resumed campaign opens the one there);
    :meth:`open_existing` is for readers, which create and change nothing."""

    def __init__(self, directory: str | Path, *, create: bool = True) -> None:
        self.path = Path(directory) / DB_NAME
        if not create:
            self.db = _connect(self.path)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            _create(self.path)
        self.db = _connect(self.path)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        # A no-op on a store made whole; completes one left half made by an older ddc.
        self.db.executescript(SCHEMA)
        self._upgrade()

    @classmethod
    def open_existing(cls, directory: str | Path) -> Store:
        """Open a campaign's store to read it; one clear error if there is none (yet)."""
        from .errors import StateError

        fix = "give the results directory of a campaign (`ddc run --out DIR`)"
        directory = Path(directory)
        path = directory / DB_NAME
        if not directory.is_dir():
            raise StateError(f"{directory}: no such directory (so no {DB_NAME}); {fix}")
        if not path.is_file():
            raise StateError(f"{directory}: no {DB_NAME} here (yet); {fix}, or wait until `ddc run` has started")
        try:
            store = cls(directory, create=False)
        except sqlite3.Error as exc:
            raise StateError(f"{path}: cannot open: {exc}; {fix}") from exc
        try:
            names = {n for (n,) in store.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as exc:
            store.close()
            raise StateError(f"{path}: not a results store ({exc}); {fix}") from exc
        if "runs" not in names:
            store.close()
            raise StateError(f"{path}: not a results store (it has no runs table); {fix}")
        return store

    def _upgrade(self) -> None:
        """Bring a store made by an older ddc to this schema: the runs columns it lacks, added in one
        transaction with the new schema_version (ALTER TABLE is transactional in SQLite). BEGIN IMMEDIATE
        makes writers that open an old store at once take turns; the second finds the columns there."""
        with self.transaction() as db:
            have = _columns(db, "runs")
            for name, kind in ADDED_RUN_COLUMNS:
                if name not in have:
                    db.execute(f"ALTER TABLE runs ADD COLUMN {name} {kind}")
            db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            # never lowered: a newer ddc's store stays marked as such
            db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version' AND CAST(value AS INTEGER) < ?",
                       (str(SCHEMA_VERSION), SCHEMA_VERSION))

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # -- writing -----------------------------------------------------------------------------------

    def set_meta(self, **values: str) -> None:
        with self.transaction() as db:
            db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", values.items())

    def save(self, r: RunRecord) -> None:
        """Write one run, all of it or nothing. A run saved again replaces the old one."""
        with self.transaction() as db:
            for table in ("metrics", "counters", "hierarchy", "levels", "nodes", "samples", "runs"):
                db.execute(f"DELETE FROM {table} WHERE run_id = ?", (r.run_id,))  # noqa: S608 (fixed names)
            row = {**{c: getattr(r, c) for c in RUN_COLUMNS}, "params": json.dumps(r.params, sort_keys=True)}
            db.execute(f"INSERT INTO runs ({', '.join(RUN_COLUMNS)}) "  # noqa: S608 (fixed names)
                       f"VALUES ({', '.join('?' * len(RUN_COLUMNS))})", [row[c] for c in RUN_COLUMNS])
            db.executemany("INSERT INTO metrics VALUES (?,?,?,?,?)", [(r.run_id, *m) for m in r.metrics])
            db.executemany("INSERT INTO counters VALUES (?,?,?,?,?,?,?)",
                           [(r.run_id, src, node, name, b, a, None if a is None or b is None else a - b)
                            for src, node, name, b, a in r.counters])
            if r.hierarchy is not None:
                db.execute("INSERT INTO hierarchy VALUES (?,?)", (r.run_id, json.dumps(r.hierarchy)))
            db.executemany("INSERT INTO levels VALUES (?,?,?,?,?,?,?,?)",
                           [(r.run_id, name, i, hits, misses, ratio, hit_ns, amat)
                            for i, (name, hits, misses, ratio, hit_ns, amat) in enumerate(r.levels)])
            db.executemany("INSERT INTO nodes VALUES (?,?,?,?,?)", [(r.run_id, *n) for n in r.nodes])
            db.executemany("INSERT INTO samples VALUES (?,?,?,?,?)", [(r.run_id, *s) for s in r.samples])

    # -- reading -----------------------------------------------------------------------------------

    def meta(self) -> dict[str, str]:
        return dict(self.db.execute("SELECT key, value FROM meta").fetchall())

    def done(self) -> dict[str, str]:
        """run_id -> status of every stored run."""
        return dict(self.db.execute("SELECT run_id, status FROM runs").fetchall())

    def runs(self) -> list[dict[str, Any]]:
        """Every run as a dict (params decoded), in campaign order, without stdout/stderr. A column an
        older store lacks (it is opened read-only, so not upgraded) reads as None."""
        have = _columns(self.db, "runs")
        select = ", ".join(c if c in have else f"NULL AS {c}" for c in READ_COLUMNS)
        cur = self.db.execute(f"SELECT {select} FROM runs ORDER BY seq, run_id")  # noqa: S608 (fixed names)
        cols = [c[0] for c in cur.description]
        out = []
        for row in cur.fetchall():
            d = dict(zip(cols, row, strict=True))
            d["params"] = json.loads(d["params"])
            out.append(d)
        return out

    def metrics(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for run_id, name, value in self.db.execute("SELECT run_id, name, value FROM metrics"):
            out.setdefault(run_id, {})[name] = value
        return out

    def metric_info(self) -> dict[str, tuple[str, str]]:
        """metric name -> (unit, better)."""
        return {n: (u, b) for n, u, b in self.db.execute("SELECT DISTINCT name, unit, better FROM metrics")}


def _columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}


def _connect(path: Path) -> sqlite3.Connection:
    # mode=rw: open the file that is there, never create an empty one in its place.
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True,
                           isolation_level=None)  # transactions are explicit


def _create(path: Path) -> None:
    """Make a store with its whole schema beside ``path``, then publish it at ``path``.

    The schema is written into a temporary file in the same directory (so on the
    same file system), which is then hard-linked to the final name: link() is
    atomic, so a reader sees no file or the whole store, and unlike rename() it
    fails when the name exists. Two campaigns that find no store at the same
    moment both build one, the first link wins, and the other opens the winner's
    store instead of replacing it (a rename would have dropped the runs already
    saved into the first). A file system without hard links falls back to
    rename(), after one more look for a store that appeared meanwhile.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.new")
    try:
        db = sqlite3.connect(tmp, isolation_level=None)
        try:
            db.executescript(f"BEGIN;{SCHEMA}COMMIT;")
            db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            # Recorded in the file header, so the store is in WAL mode from its first reader on.
            db.execute("PRAGMA journal_mode=WAL")
        finally:
            db.close()  # the last connection: SQLite checkpoints and removes -wal and -shm
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another creator published first; its store is whole: use it
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK):
                raise
            if not path.exists():
                os.rename(tmp, path)
        _fsync_directory(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _fsync_directory(directory: Path) -> None:
    """Make the new name durable: after a crash the store is there, or absent, not half named."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
