"""A paced run that lagged, on a testbed whose dilation is auto, is run again one step slower."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from orchestrator import execute, pacing, testbed
from orchestrator.state import TestbedState
from orchestrator.store import RunRecord


class Said:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def say(self, message: str) -> None:
        self.lines.append(message)


def session(monkeypatch: pytest.MonkeyPatch, dilation: Any, k: float = 50.0) -> tuple[execute.Session, list, Said]:
    calls: list[tuple[str, float]] = []
    monkeypatch.setattr(testbed, "set_dilation", lambda name, d: calls.append((name, d)))
    plan = SimpleNamespace(blade="cb0", testbed=SimpleNamespace(rack=SimpleNamespace(dilation=dilation)))
    said = Said()
    s = execute.Session(plan, said)  # type: ignore[arg-type]
    s.st = TestbedState(name="rack", spec_file="f", spec_digest="d", uri="qemu:///system", plugin=True,
                        mode="paced", dilation=k)
    return s, calls, said


def record(lag: float | None, status: str = "ok") -> RunRecord:
    return RunRecord(run_id="redis-1-r0", seq=0, workload="redis", rep=0, params={}, status=status, blade="cb0",
                     command="", started=0.0, finished=0.0, dilation=50.0, lag_fraction=lag)


def test_a_lagged_run_on_auto_raises_k_one_step_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    s, calls, said = session(monkeypatch, "auto")
    assert s.slow_down_after(record(0.054))
    assert calls == [("rack", 60.0)]
    assert s.dilation == 60.0  # the rest of the campaign runs at the new k
    assert "lagged 5.4 %" in said.lines[0] and "at 60" in said.lines[0]


@pytest.mark.parametrize(("dilation", "lag", "status"), [
    ("auto", 0.009, "ok"),    # under the limit
    ("auto", None, "ok"),     # not paced
    ("auto", 0.2, "failed"),  # a failed run is not judged by its timing
    (50.0, 0.2, "ok"),        # the file pins k: the run stays, flagged
])
def test_otherwise_the_run_stands(monkeypatch: pytest.MonkeyPatch, dilation: Any, lag: float | None,
                                  status: str) -> None:
    s, calls, said = session(monkeypatch, dilation)
    assert not s.slow_down_after(record(lag, status))
    assert calls == [] and said.lines == []
    assert s.dilation == 50.0


def test_the_ladder_goes_one_step_up_and_beyond_it_a_quarter() -> None:
    assert pacing.slower(50) == 60
    assert pacing.slower(45) == 50
    assert pacing.slower(1000) == 1250
