"""`ddc run`'s progress where stderr is a log file, not a terminal: one line per run."""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest
from rich.console import Console

from orchestrator import cli


def progress(monkeypatch: pytest.MonkeyPatch, terminal: bool) -> tuple[cli.CampaignProgress, io.StringIO]:
    sink = io.StringIO()
    monkeypatch.setattr(cli, "ERR", Console(file=sink, force_terminal=terminal, width=200))
    return cli.CampaignProgress(), sink


def test_a_log_file_gets_a_line_per_finished_run_with_counts_and_what_is_left(monkeypatch: pytest.MonkeyPatch) -> None:
    p, sink = progress(monkeypatch, terminal=False)
    with p:
        p.begin(total=5, done=1, failed=0)
        for run_id, status in (("a-r0", "ok"), ("b-r0", "timeout")):
            run = SimpleNamespace(run_id=run_id, workload=run_id[0])
            p.started(run, warmup=False)  # type: ignore[arg-type]
            p.finished(run, status, warmup=False)  # type: ignore[arg-type]
        p.finished(SimpleNamespace(run_id="w", workload="w"), "ok", warmup=True)  # type: ignore[arg-type]
    lines = [line for line in sink.getvalue().splitlines() if line.startswith("run ")]
    assert lines[0].startswith("run a-r0: ok; 2 ok, 0 failed, 3 left"), lines
    assert lines[1].startswith("run b-r0: timeout; 2 ok, 1 failed, 2 left"), lines
    assert "min to go" in lines[1]
    assert len(lines) == 2  # a warm-up is not a run; a failure is said once


def test_a_terminal_gets_the_bar_and_only_failures_as_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    p, sink = progress(monkeypatch, terminal=True)
    with p:
        p.begin(total=2, done=0, failed=0)
        p.finished(SimpleNamespace(run_id="a-r0", workload="a"), "ok", warmup=False)  # type: ignore[arg-type]
        p.finished(SimpleNamespace(run_id="b-r0", workload="b"), "failed", warmup=False)  # type: ignore[arg-type]
    out = sink.getvalue()
    assert "run b-r0: failed" in out
    assert "run a-r0" not in out
