"""The results store: it appears whole, two creators share one store, readers get one clear line.

`ddc results`, `ddc report` and the VM tests read results.sqlite while `ddc run`
may be creating it; a reader that found the file without its tables got
"no such table: runs" (issue 15).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

import pytest

from orchestrator import cli, store
from orchestrator.errors import StateError
from orchestrator.store import DB_NAME, SCHEMA_VERSION, RunRecord, Store

TABLES = {"meta", "runs", "metrics", "counters", "hierarchy", "levels", "nodes", "samples"}


def record(run_id: str, seq: int = 0) -> RunRecord:
    return RunRecord(run_id=run_id, seq=seq, workload="w", rep=0, params={"x": seq}, status="ok", blade="cb0",
                     command="true", started=1.0, finished=2.0, metrics=[("m", float(seq), "", "higher")])


def tables(path: Path) -> set[str]:
    """The tables a reader finds, opening the file as `ddc results` or a test's poll would."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        db.close()


def test_a_reader_never_sees_the_store_without_its_tables(tmp_path: Path) -> None:
    """Create stores one after another while a thread looks at each final path as
    often as it can: every time the file exists, it has every table."""
    rounds = 40
    current: list[Path] = []
    seen: list[set[str]] = []
    errors: list[str] = []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            if not current:
                continue
            path = current[-1] / DB_NAME
            if not path.exists():
                continue
            try:
                seen.append(tables(path))
            except sqlite3.Error as exc:  # a database without a header, locked, ...: all wrong
                errors.append(f"{path}: {exc}")

    reader = threading.Thread(target=poll)
    reader.start()
    try:
        for i in range(rounds):
            directory = tmp_path / f"c{i}"
            current.append(directory)
            Store(directory).close()
    finally:
        done.set()
        reader.join()
    assert not errors, errors[:3]
    assert seen, "the reader never saw a store: the test proves nothing"
    incomplete = [t for t in seen if not TABLES <= t]
    assert not incomplete, f"{len(incomplete)} of {len(seen)} looks saw a store without its tables: {incomplete[:3]}"


def test_the_store_is_made_aside_and_published_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While the schema is written, the final name does not exist; nothing is left beside it."""
    made: list[bool] = []  # whether the final name existed at each connection
    real_connect = sqlite3.connect

    def watching_connect(database: object, *args: object, **kwargs: object) -> sqlite3.Connection:
        made.append((tmp_path / DB_NAME).exists())
        return real_connect(database, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(store.sqlite3, "connect", watching_connect)
    with Store(tmp_path) as s:
        s.save(record("r0"))
    monkeypatch.undo()
    assert made == [False, True], "the schema is written before the name exists; then the store is opened"
    assert sorted(os.listdir(tmp_path)) == [DB_NAME], "no temporary file, journal or WAL left behind"
    assert tables(tmp_path / DB_NAME) >= TABLES


def test_an_existing_store_is_never_replaced(tmp_path: Path) -> None:
    """A creator that lost the race (it saw no store, another published one first) uses the other's."""
    with Store(tmp_path) as first:
        first.save(record("kept"))
    inode = (tmp_path / DB_NAME).stat().st_ino
    store._create(tmp_path / DB_NAME)  # the loser's creation, arriving late
    assert (tmp_path / DB_NAME).stat().st_ino == inode
    assert sorted(os.listdir(tmp_path)) == [DB_NAME], "the loser's temporary file is gone"
    with Store(tmp_path) as again:  # resume: the same store
        assert again.done() == {"kept": "ok"}


def save_at_once(directory: Path, writers: int, first: int = 0) -> None:
    """``writers`` threads open the store in ``directory`` at the same moment
    and each saves one run (``w0``, ``w1``, ...); any error fails the test."""
    start = threading.Barrier(writers)
    failures: list[BaseException] = []

    def write(i: int) -> None:
        try:
            start.wait()
            with Store(directory) as s:
                s.save(record(f"w{i}", first + i))
        except BaseException as exc:  # noqa: BLE001 (reported by the assertion below)
            failures.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures


def test_concurrent_creators_share_one_store(tmp_path: Path) -> None:
    """Eight writers open the same new directory at once and each saves its run: no run is lost
    (a store renamed over another would take the runs saved in the replaced one with it)."""
    for attempt in range(5):
        directory = tmp_path / f"a{attempt}"
        save_at_once(directory, 8)
        with Store.open_existing(directory) as s:
            assert sorted(s.done()) == [f"w{i}" for i in range(8)]
        assert [n for n in os.listdir(directory) if n.endswith(".new")] == []


def test_resume_keeps_the_runs_and_the_meta(tmp_path: Path) -> None:
    with Store(tmp_path) as s:
        s.set_meta(name="c")
        s.save(record("r0"))
    with Store(tmp_path) as s:
        assert s.done() == {"r0": "ok"} and s.meta() == {"schema_version": str(SCHEMA_VERSION), "name": "c"}


def test_readers_do_not_create_or_repair(tmp_path: Path) -> None:
    with pytest.raises(StateError) as err:
        Store.open_existing(tmp_path / "absent")
    assert err.value.message == (f"{tmp_path / 'absent'}: no such directory (so no results.sqlite); give the "
                                 "results directory of a campaign (`ddc run --out DIR`)")
    assert not (tmp_path / "absent").exists()
    with pytest.raises(StateError) as err:
        Store.open_existing(tmp_path)
    assert err.value.message == (f"{tmp_path}: no results.sqlite here (yet); give the results directory of a "
                                 "campaign (`ddc run --out DIR`), or wait until `ddc run` has started")
    assert not (tmp_path / DB_NAME).exists(), "a reader creates no store"
    (tmp_path / DB_NAME).write_bytes(b"")  # e.g. left by a ddc older than the atomic creation
    with pytest.raises(StateError) as err:
        Store.open_existing(tmp_path)
    assert err.value.message == (f"{tmp_path / DB_NAME}: not a results store (it has no runs table); give the "
                                 "results directory of a campaign (`ddc run --out DIR`)")
    assert (tmp_path / DB_NAME).stat().st_size == 0, "a reader writes no schema into it"
    (tmp_path / DB_NAME).write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(StateError, match=r"not a results store \(file is not a database\)"):
        Store.open_existing(tmp_path)


@pytest.mark.parametrize("verb", [["results", "--csv", "t.csv"], ["report"]])
def test_results_and_report_before_the_store_exists(verb: list[str], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    out.mkdir()  # `ddc run` made the directory, not the store yet
    argv = [verb[0], str(out), *verb[1:]]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err == (f"ddc: error: {out}: no results.sqlite here (yet); give the results directory of a campaign "
                   "(`ddc run --out DIR`), or wait until `ddc run` has started\n")
    assert sorted(os.listdir(out)) == [], "nothing written"


# -- paced mode's columns, and stores made before them ---------------------------------------------

# The runs table as schema 1 made it (before paced mode), and one run of it.
OLD_RUNS = """CREATE TABLE runs (
    run_id TEXT PRIMARY KEY, seq INTEGER NOT NULL, workload TEXT NOT NULL, rep INTEGER NOT NULL,
    params TEXT NOT NULL, status TEXT NOT NULL CHECK (status IN ('ok', 'failed', 'timeout')),
    blade TEXT NOT NULL, command TEXT NOT NULL, exit_code INTEGER, started REAL NOT NULL, finished REAL NOT NULL,
    workload_s REAL, setup_s REAL, teardown_s REAL, stdout TEXT NOT NULL, stderr TEXT NOT NULL, error TEXT);"""
OLD_RUN = ("old", 0, "w", 0, '{"x": 1}', "ok", "cb0", "true", 0, 1.0, 2.0, 0.5, 0.1, 0.2, "out", "", None)
PACED = ("dilation", "lag_ns", "lag_fraction")


def old_store(directory: Path) -> Path:
    """A store as a ddc of schema 1 left it: WAL mode, version 1, one run, no paced columns."""
    directory.mkdir()
    path = directory / DB_NAME
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(f"BEGIN;{OLD_RUNS}{store.SCHEMA}COMMIT;")  # SCHEMA's runs: IF NOT EXISTS, skipped
    db.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    db.execute(f"INSERT INTO runs VALUES ({','.join('?' * len(OLD_RUN))})", OLD_RUN)
    db.execute("PRAGMA journal_mode=WAL")
    db.close()
    return path


def run_columns(path: Path) -> list[str]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [row[1] for row in db.execute("PRAGMA table_info(runs)")]
    finally:
        db.close()


def test_paced_fields_round_trip(tmp_path: Path) -> None:
    paced = record("paced", 1)
    paced.dilation, paced.lag_ns, paced.lag_fraction = 30.0, 1_234_567, 0.0125
    with Store(tmp_path) as s:
        s.save(record("plain", 0))
        s.save(paced)
    with Store.open_existing(tmp_path) as s:
        plain, back = s.runs()
    assert (back["dilation"], back["lag_ns"], back["lag_fraction"]) == (30.0, 1_234_567, 0.0125)
    assert isinstance(back["lag_ns"], int)
    assert (plain["dilation"], plain["lag_ns"], plain["lag_fraction"]) == (None, None, None)
    assert run_columns(tmp_path / DB_NAME)[-3:] == list(PACED)


def test_a_reader_reads_an_old_store_as_it_is(tmp_path: Path) -> None:
    """open_existing writes nothing: the columns stay absent and read as None, the file keeps its bytes."""
    path = old_store(tmp_path / "c")
    before = path.read_bytes()
    with Store.open_existing(tmp_path / "c") as s:
        [run] = s.runs()
        meta = s.meta()
    assert run["run_id"] == "old" and run["workload_s"] == 0.5 and run["params"] == {"x": 1}
    assert (run["dilation"], run["lag_ns"], run["lag_fraction"]) == (None, None, None)
    assert meta == {"schema_version": "1"}
    assert not set(PACED) & set(run_columns(path))
    assert path.read_bytes() == before


def test_resuming_an_old_store_adds_the_columns(tmp_path: Path) -> None:
    path = old_store(tmp_path / "c")
    paced = record("new", 1)
    paced.dilation, paced.lag_ns, paced.lag_fraction = 20.0, 5, 0.5
    with Store(tmp_path / "c") as s:
        s.save(paced)
    assert run_columns(path)[-3:] == list(PACED)
    with Store(tmp_path / "c") as s:  # a second resume finds them there
        assert s.meta() == {"schema_version": str(SCHEMA_VERSION)}
        old, new = s.runs()
    assert old["run_id"] == "old" and old["teardown_s"] == 0.2 and old["dilation"] is None
    assert (new["dilation"], new["lag_ns"], new["lag_fraction"]) == (20.0, 5, 0.5)


def test_writers_upgrading_one_old_store_at_once(tmp_path: Path) -> None:
    """Each checks and alters inside one BEGIN IMMEDIATE: none adds a column another just added."""
    old_store(tmp_path / "c")
    writers = 6
    save_at_once(tmp_path / "c", writers, first=1)
    assert run_columns(tmp_path / "c" / DB_NAME).count("dilation") == 1
    with Store.open_existing(tmp_path / "c") as s:
        assert sorted(s.done()) == ["old", *(f"w{i}" for i in range(writers))]
