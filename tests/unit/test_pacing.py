"""Paced mode's arithmetic (orchestrator/pacing.py), on plugin statistics
recorded from real runs (tests/data/plugin/paced-*.json, written by the plugin
under qemu-x86_64: a free-running chase on two threads, and a loop at k = 1
that cannot keep up)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator import pacing, testbed
from orchestrator.errors import DdcError
from orchestrator.plugin import plugin_arg
from orchestrator.spec import TestbedSpec
from orchestrator.topology import resolve
from tests.conftest import DATA


def recorded(name: str) -> dict[str, Any]:
    stats: dict[str, Any] = json.loads((DATA / "plugin" / f"paced-{name}.json").read_text())
    return stats


def test_clocks_of_a_free_running_blade() -> None:
    c = pacing.clocks(recorded("free-running"))
    assert (c.mode, c.dilation, c.cpi_ns, c.window_us) == ("paced", 0, 0.5, 20000)
    assert not c.paced  # k = 0: the clocks run, nothing waits
    assert [v.vcpu for v in c.vcpus] == [0, 1, 2]
    main = c.vcpus[0]
    assert main.busy_wall_ns == main.wall_ns - main.idle_ns - main.wait_ns
    assert main.busy_model_ns == main.model_ns  # no idle model time, lag or forgiven at k = 0
    assert c.lag_ns == 0 and c.lag_fraction == 0


def test_host_cost_is_pooled_over_the_vcpus_that_worked() -> None:
    stats = recorded("free-running")
    vcpus = pacing.clocks(stats).vcpus
    pooled = sum(v.busy_wall_ns for v in vcpus) / sum(v.busy_model_ns for v in vcpus)
    assert pacing.host_cost(stats) == pytest.approx(pooled)
    costs = [v.busy_wall_ns / v.busy_model_ns for v in vcpus]
    assert min(costs) < pacing.host_cost(stats) < max(costs)
    stats["vcpus"][1]["model_ns"] = 10  # a vCPU that did no work says nothing of the host
    rest = [v for v in pacing.clocks(stats).vcpus if v.vcpu != 1]
    assert pacing.host_cost(stats) == pytest.approx(sum(v.busy_wall_ns for v in rest)
                                                    / sum(v.busy_model_ns for v in rest))


def test_a_run_without_work_cannot_calibrate() -> None:
    stats = recorded("free-running")
    for v in stats["vcpus"]:
        v["model_ns"] = 999_999  # under 1 ms of model work each
    with pytest.raises(DdcError, match="did no measurable work"):
        pacing.host_cost(stats)


def test_lag_of_a_blade_that_cannot_keep_up() -> None:
    c = pacing.clocks(recorded("lagging"))
    assert c.paced and c.dilation == 1
    (v,) = c.vcpus
    assert v.lag_ns > 0.5 * v.model_ns
    assert c.lag_fraction == pytest.approx(v.lag_ns / v.model_ns)
    assert c.lag_fraction > pacing.LAG_LIMIT


@pytest.mark.parametrize("cost, margin, k", [
    (0.4, 1.5, 1), (1.0, 1.5, 2), (13.8, 1.5, 25), (18.0, 1.5, 30), (20.1, 1.5, 40), (21.9, 2.0, 50),
    (700, 1.5, 1050),
])
def test_dilation_is_the_next_ladder_step(cost: float, margin: float, k: float) -> None:
    assert pacing.choose_dilation(cost, margin) == k


def rack(**changes: Any) -> Any:
    data = {"name": "r", "accel": "tcg", "memory_blades": [{"name": "mb0", "size": "1G", "latency_ns": 300}],
            "compute_blades": [{"name": "cb0", "vcpus": 2, "memory": "1G",
                                "remote": [{"blade": "mb0", "size": "1G"}]}], **changes}
    return resolve(TestbedSpec.model_validate(data), DATA)


def test_plugin_arg_of_a_paced_blade() -> None:
    auto = rack(mode="paced")
    opts = plugin_arg(auto, auto.compute_blades[0], DATA / "lib.so", DATA / "s", DATA / "j").split(",")
    assert "mode=paced" in opts and "dilation=0" in opts and "cpi_ns=0.4" in opts  # auto: measured at up
    fixed = rack(mode="paced", dilation=25, cpi_ns=0.25)
    opts = plugin_arg(fixed, fixed.compute_blades[0], DATA / "lib.so", DATA / "s", DATA / "j").split(",")
    assert "dilation=25" in opts and "cpi_ns=0.25" in opts
    inject = rack()
    opts = plugin_arg(inject, inject.compute_blades[0], DATA / "lib.so", DATA / "s", DATA / "j").split(",")
    assert not any(o.startswith(("dilation=", "cpi_ns=")) for o in opts)
    # every cache level carries its hit time, which paced mode prices
    cache = next(o for o in opts if o.startswith("cache="))
    assert cache.endswith(":shared:15") and ":private:1;" in cache


def test_kernel_args_reach_every_blades_command_line(tmp_path: Path, ddc_home: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({
        "name": "r", "accel": "tcg", "mode": "paced", "kernel_args": ["nohz_full=1", "rcu_nocbs=1"],
        "compute_blades": [{"name": "cb0", "vcpus": 2, "memory": "1G"}, {"name": "cb1", "vcpus": 2, "memory": "1G"}]}))
    cmdlines = re.findall(r"<cmdline>(.*)</cmdline>", testbed.dry_run(path))
    assert len(cmdlines) == 2 and all(c.endswith(" nohz_full=1 rcu_nocbs=1") for c in cmdlines), cmdlines
