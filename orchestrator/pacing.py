"""Paced mode: the plugin's model clocks, and how ``dilation: auto`` picks k.

In paced mode every vCPU has a model clock (instructions x ``cpi_ns``, each
access at the hit time of the level that served it, memory at its node's
latency plus link queueing), and the plugin keeps the vCPU from running ahead
of k x its model clock on the wall clock. The guest's clocks run on wall time,
so everything a guest measures is k times its model value: a duration divided
by k, or a rate multiplied by k, is model time. A vCPU the host cannot keep
up with falls behind; within the plugin's catch-up window that costs nothing,
beyond it the shortfall is *lag*, counted per vCPU (``qemu_devices/README.md``).

``dilation: auto`` measures, on this host, how much host time a model
nanosecond costs: with k = 0 the plugin's clocks run but nothing waits, while
``ddc-calibrate`` keeps every vCPU busy with what is dearest to emulate
(instructions, L1 hits, page faults). k is that cost times ``MARGIN``, rounded
up to a step of ``LADDER``, so that the host keeps headroom when it gets
busier or a program starts (exec and page faults cost the emulator more per
model nanosecond than the calibration's mix), and two `up`s on the same host
tend to pick the same k.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import guest, plugin
from .errors import DdcError
from .guest import Endpoint

LOG = logging.getLogger(__name__)

LADDER = (1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 60, 80, 100, 120, 150, 200, 250, 300, 400,
          500, 600, 800, 1000)
MARGIN = 2.0  # headroom: the host may get twice as busy as at calibration, and process start-up dearer
CALIBRATION_S = 3.0
LAG_LIMIT = 0.01  # a run whose lag is over 1 % of its model time is flagged
MIN_BUSY_MODEL_NS = 1_000_000  # a vCPU that did less than 1 ms of model work says nothing of the host's cost


class PacingError(DdcError):
    """dilation: auto could not measure this host."""


@dataclass(frozen=True)
class VcpuClock:
    """One vCPU's paced counters (since the plugin's last ``reset``): model
    time in model ns, the rest in wall ns."""

    vcpu: int
    model_ns: int  # the model clock: work, idle (wall / k), lag and forgiven
    lag_ns: int  # behind by more than the window: pulled up, counted against the run
    forgiven_ns: int  # behind (within the window) when it went idle: device time the model does not charge
    idle_model_ns: int
    wall_ns: int
    idle_ns: int
    wait_ns: int
    waits: int

    @property
    def busy_model_ns(self) -> int:
        return self.model_ns - self.idle_model_ns - self.lag_ns - self.forgiven_ns

    @property
    def busy_wall_ns(self) -> int:
        return self.wall_ns - self.idle_ns - self.wait_ns

    @property
    def host_cost(self) -> float | None:
        """Host ns per model ns of work; None when there was too little work to tell."""
        if self.busy_model_ns < MIN_BUSY_MODEL_NS:
            return None
        return self.busy_wall_ns / self.busy_model_ns

    @property
    def lag_fraction(self) -> float:
        return self.lag_ns / self.model_ns if self.model_ns else 0.0


@dataclass(frozen=True)
class Clocks:
    """A blade's pacing, from one plugin ``stats`` reply."""

    mode: str
    dilation: float
    cpi_ns: float
    window_us: int
    vcpus: tuple[VcpuClock, ...]

    @property
    def paced(self) -> bool:
        return self.mode == "paced" and self.dilation > 0

    @property
    def lag_ns(self) -> int:
        return sum(v.lag_ns for v in self.vcpus)

    @property
    def wait_ns(self) -> int:
        return sum(v.wait_ns for v in self.vcpus)

    @property
    def lag_fraction(self) -> float:
        """The worst vCPU's lag as a share of its model time."""
        return max((v.lag_fraction for v in self.vcpus), default=0.0)


def clocks(stats: Mapping[str, Any]) -> Clocks:
    fields = ("model_ns", "lag_ns", "forgiven_ns", "idle_model_ns", "wall_ns", "idle_ns", "wait_ns", "waits")
    vcpus = tuple(VcpuClock(vcpu=int(v["vcpu"]), **{f: int(v.get(f, 0)) for f in fields})
                  for v in stats.get("vcpus", []))
    return Clocks(mode=str(stats.get("mode", "")), dilation=float(stats.get("dilation", 0)),
                  cpi_ns=float(stats.get("cpi_ns", 0)), window_us=int(stats.get("window_us", 0)), vcpus=vcpus)


def host_cost(stats: Mapping[str, Any]) -> float:
    """Host ns per model ns of work, over the vCPUs that did some, from a
    free-running (k = 0) run. Pooled rather than the dearest vCPU's: which vCPU
    also serves the SSH session and the interrupts changes from run to run, and
    the dearest one's figure with it (13 to 25 here)."""
    busy = [v for v in clocks(stats).vcpus if v.host_cost is not None]
    if not busy:
        raise PacingError("the calibration run did no measurable work (under 1 ms of model time on every vCPU)",
                          hint="give a number for dilation in the testbed file")
    return sum(v.busy_wall_ns for v in busy) / sum(v.busy_model_ns for v in busy)


def is_lagged(dilation: float | None, lag_fraction: float | None) -> bool | None:
    """Whether a paced run fell behind by more than LAG_LIMIT of its model time; None when not paced."""
    if dilation is None or lag_fraction is None:
        return None
    return lag_fraction > LAG_LIMIT


def slower(dilation: float) -> float:
    """The step of LADDER after ``dilation`` (beyond the ladder, a quarter more):
    what a campaign on a testbed with ``dilation: auto`` moves to when a run lags."""
    return float(next((k for k in LADDER if k > dilation), math.ceil(dilation * 1.25)))


def choose_dilation(cost: float, margin: float = MARGIN) -> float:
    """The smallest step of LADDER at or above ``cost x margin`` (beyond the
    ladder, the next whole number)."""
    need = cost * margin
    return float(next((k for k in LADDER if k >= need), math.ceil(need)))


@dataclass(frozen=True)
class Calibration:
    dilation: float
    costs: dict[str, float]  # blade -> host ns per model ns

    def describe(self) -> str:
        worst = max(self.costs.values())
        per = ", ".join(f"{b} {c:.1f}" for b, c in self.costs.items())
        return (f"dilation {self.dilation:g}: a model ns costs this host up to {worst:.1f} ns ({per}), "
                f"x{MARGIN:g} headroom")


def calibrate(sockets: Mapping[str, Path], endpoints: Mapping[str, Endpoint],
              say: Callable[[str], None] = lambda _m: None) -> Calibration:
    """Measure each blade alone (free-running, k = 0) under ``ddc-calibrate``,
    then give every blade the k the dearest one needs: one k for the whole
    rack, so that model time means the same on every blade."""
    costs = {}
    for blade, sock in sockets.items():
        say(f"paced: measuring {blade} for {CALIBRATION_S:g} s (dilation: auto)")
        with plugin.Control(sock) as ctl:
            ctl.request("set_pacing", dilation=0)
            ctl.request("reset")
            conn = guest.connect(endpoints[blade])
            try:
                res = guest.run(conn, f"ddc-calibrate -t {CALIBRATION_S:g}", timeout=120 + 100 * CALIBRATION_S,
                                check=False, blade=blade)
            finally:
                conn.close()
            if res.exit_code != 0:
                raise PacingError(f"{blade}: `ddc-calibrate` failed ({res.exit_code}): "
                                  f"{(res.stderr or res.stdout).strip()[-200:]}",
                                  hint="dilation: auto needs the ddc-calibrate probe (workloads/src) in the image; "
                                       "or give a number for dilation")
            costs[blade] = host_cost(ctl.stats())
    cal = Calibration(dilation=choose_dilation(max(costs.values())), costs=costs)
    LOG.debug("calibration: %s", cal)
    return cal


def set_dilation(sockets: Mapping[str, Path], dilation: float) -> None:
    """The same k on every blade, and counters from zero."""
    for sock in sockets.values():
        with plugin.Control(sock) as ctl:
            ctl.request("set_pacing", dilation=dilation)
            ctl.request("reset")
