"""The workload definitions in workloads/, checked against output recorded in a
real TCG blade (tests/data/workloads/<name>.stdout and .stderr: the rendered
command with default parameters and default placement)."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.errors import SpecError
from orchestrator.workload import all_packages, load_workload, parse_metrics, render, workload_names

# Not `from tests.conftest import DATA`: the file must also run as `pytest FILE`,
# where the repository root is not on sys.path.
RECORDED = Path(__file__).resolve().parent.parent / "data" / "workloads"
WORKLOADS = Path(__file__).resolve().parent.parent.parent / "workloads"
NAMES = workload_names()


def recorded(name: str) -> tuple[str, str]:
    out, err = RECORDED / f"{name}.stdout", RECORDED / f"{name}.stderr"
    assert out.is_file(), f"no recorded output for {name}: run it in a blade, save {out}"
    return out.read_text(), err.read_text() if err.is_file() else ""


def test_the_expected_workloads_exist() -> None:
    assert set(NAMES) >= {"sysbench-memory", "sysbench-threads", "stress-ng-vm", "redis", "memcached",
                          "mbw", "ddc-ptrchase", "ddc-stream"}


@pytest.mark.parametrize("name", NAMES)
def test_workload_loads_and_is_described(name: str) -> None:
    wl = load_workload(name)
    assert wl.name == name
    assert wl.description and "\n" not in wl.description
    assert 60 <= wl.timeout <= 600
    assert (WORKLOADS / f"{name}.yaml").read_text().startswith("#"), "a comment header says what it measures"


@pytest.mark.parametrize("name", NAMES)
def test_recorded_output_has_every_required_metric(name: str) -> None:
    wl = load_workload(name)
    found, missing = parse_metrics(wl, *recorded(name))
    assert missing == []
    assert wl.primary_metric.name in found


@pytest.mark.parametrize("name", NAMES)
def test_defaults_render_without_leftovers(name: str) -> None:
    steps = render(load_workload(name), {}, "numactl --membind=1", "/run/ddc-run")
    for text in (steps.setup, steps.command, steps.teardown):
        assert "{{" not in text and "{%" not in text
    assert "numactl --membind=1" in steps.setup + steps.command


# Exact values read from the recorded files: a regex that catches the wrong
# column or line fails here.
SPOT_CHECKS = [
    ("sysbench-memory", {"total_s": 1.2753, "mib_per_s": 782.47, "ops_per_s": 12.23, "latency_avg_ms": 142.01}),
    ("sysbench-threads", {"total_time_s": 2.6613, "latency_avg_ms": 8.77}),
    ("stress-ng-vm", {"bogo_ops_per_s": 696.13, "bogo_ops_per_cpu_s": 349.62, "bogo_ops": 2799}),
    ("redis", {"get_rps": 1934.24, "set_rps": 1556.02, "get_p50_ms": 2.735, "get_p99_ms": 9.327,
               "set_p50_ms": 3.143, "set_p99_ms": 12.335}),
    ("memcached", {"ops_per_s": 1629, "ops": 3268, "get_avg_ms": 9.565, "set_avg_ms": 12.192, "get_misses": 0}),
    ("mbw", {"memcpy_mib_per_s": 199.155, "dumb_mib_per_s": 221.614}),
    ("ddc-ptrchase", {"ns_per_load": 365.5}),
    ("ddc-stream", {"gbps": 0.847}),
]


@pytest.mark.parametrize(("name", "expected"), SPOT_CHECKS, ids=[n for n, _ in SPOT_CHECKS])
def test_metric_values(name: str, expected: dict[str, float]) -> None:
    found, _ = parse_metrics(load_workload(name), *recorded(name))
    assert found == pytest.approx(expected)


def test_stress_ng_metrics_come_from_stderr() -> None:
    wl = load_workload("stress-ng-vm")
    out, err = recorded("stress-ng-vm")
    assert parse_metrics(wl, err, out)[1] == [m.name for m in wl.metrics], "stdout has no metrics"


def test_mbw_method_absent_from_output_is_optional() -> None:
    found, missing = parse_metrics(load_workload("mbw"), *recorded("mbw"))
    assert missing == [] and "mcblock_mib_per_s" not in found


def test_redis_places_the_server_only() -> None:
    steps = render(load_workload("redis"), {"port": 7000, "io_threads": 2}, "numactl --membind=1", "/run/x")
    assert steps.setup.startswith("numactl --membind=1 redis-server ")
    assert "--io-threads 2" in steps.setup and "--port 7000" in steps.setup
    assert steps.setup.count("numactl") == 1
    assert steps.command.startswith("redis-benchmark ") and "numactl" not in steps.command
    assert "-p 7000" in steps.command
    assert "shutdown nosave" in steps.teardown and "kill -9" in steps.teardown
    assert "numactl" not in steps.teardown


def test_memcached_places_the_server_only() -> None:
    steps = render(load_workload("memcached"), {}, "numactl --membind=1", "/run/x")
    assert steps.setup.startswith("numactl --membind=1 memcached -t 2 ")
    assert steps.command.startswith("memcaslap ") and "numactl" not in steps.command


def test_empty_placement_leaves_no_prefix() -> None:
    steps = render(load_workload("redis"), {}, "", "/run/x")
    assert steps.setup.startswith("redis-server ")
    assert render(load_workload("mbw"), {}, "", "/run/x").command.startswith("mbw -q -n 5 -t0 -t1 32")


def test_params_override_defaults_and_unknown_ones_are_ignored() -> None:
    steps = render(load_workload("sysbench-memory"), {"threads": 1, "oper": "read", "bogus": 3}, "", "/r")
    assert "--threads=1 " in steps.command and "--memory-oper=read " in steps.command
    assert "bogus" not in steps.command


def test_stress_ng_flags() -> None:
    command = render(load_workload("stress-ng-vm"), {"threads": 1, "seconds": 2}, "", "/r").command
    assert command.startswith("stress-ng --vm 1 --vm-bytes 64M --vm-method write64 ")
    assert "--timeout 2s --metrics-brief" in command


def test_template_with_undeclared_variable_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\n"
                    "params: {threads: 2}\n"
                    "command: 'stress --cpu {{ threads }} --timeout {{ seconds }}'\n"
                    "metrics: [{name: x, regex: '([0-9]+)'}]\n")
    with pytest.raises(SpecError) as err:
        load_workload(path)
    assert "command" in str(err.value)
    assert "seconds" in str(err.value)


def test_undeclared_variable_in_teardown_names_the_step(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\n"
                    "command: 'true'\n"
                    "teardown: ['true', 'kill {{ pid }}']\n"
                    "metrics: [{name: x, regex: '([0-9]+)'}]\n")
    with pytest.raises(SpecError, match=r"teardown\[1\].*pid"):
        load_workload(path)


def test_all_packages() -> None:
    packages = all_packages()
    for package in ("sysbench", "redis-server", "redis-tools", "memcached", "libmemcached-tools", "mbw",
                     "stress-ng"):
        assert package in packages
    assert packages == sorted(set(packages))
