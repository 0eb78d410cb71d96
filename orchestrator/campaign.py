"""The campaign file: which workloads to run, over which parameter matrix, on
which testbed, how often. Expanded here into a list of runs; nothing is started.

::

    name: latency-sweep
    testbed: rack.yaml            # relative to this file
    blade: cb0                    # the compute blade that runs the workloads (default: the first)
    repetitions: 2
    warmup: 1                     # unrecorded runs of each workload before its first recorded one
    timeout: 300                  # per run; default: each workload's own
    workloads:
      - sysbench-memory           # by name: workloads/sysbench-memory.yaml
      - name: redis
        params: {clients: 20}     # fixed for this workload
        matrix: {io_threads: [1, 2]}
      - name: ddc-ptrchase
        repetitions: 5            # this workload's own (a noisy probe); default: the campaign's
    matrix:                       # every combination, for every workload
      mb0.latency_ns: [150, 400, 900]
      placement: [membind=0, membind=1]

Matrix keys, besides the workloads' own parameters:

``placement``         ``default``, ``membind=N``, ``preferred=N``, ``interleave`` (all
                      nodes) or ``interleave=N,M``; applied with numactl
``<blade>.latency_ns``, ``<blade>.bandwidth_gbps``
                      of a memory blade, changed at runtime through the plugin
``numa_balancing``    the guest's ``kernel.numa_balancing`` (0, 1 or 2)
``demotion_enabled``  the guest's ``/sys/kernel/mm/numa/demotion_enabled``

A run's identity is its workload, its parameters and its repetition: the same
campaign file yields the same run ids, which is what lets ``ddc run`` resume.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from . import testbed
from .errors import DdcError, SpecError
from .spec import Name, _KeyError, _Model, load_yaml, validate
from .topology import Rack
from .workload import ParamValue, WorkloadSpec, load_workload

PLACEMENT_HINT = "use default, membind=N, preferred=N, interleave or interleave=N,M"
_PLACEMENT_RE = re.compile(r"^(default|interleave|(membind|preferred|interleave)=(\d+(,\d+)*))$")
KNOBS = ("numa_balancing", "demotion_enabled")
LINK_KEYS = ("latency_ns", "bandwidth_gbps")


def check_placement(value: Any) -> str:
    if not isinstance(value, str) or not _PLACEMENT_RE.match(value):
        raise ValueError(f"{value!r} is not a placement; {PLACEMENT_HINT}")
    kind, _, nodes = value.partition("=")
    if kind == "preferred" and "," in nodes:
        raise ValueError(f"{value!r}: preferred takes one node; {PLACEMENT_HINT}")
    return value


def numactl(placement: str) -> str:
    """The command prefix for a placement (empty for ``default``)."""
    kind, _, nodes = check_placement(placement).partition("=")
    if kind == "default":
        return ""
    return f"numactl --{kind}={nodes or 'all'}"


def placement_nodes(placement: str) -> list[int]:
    _, _, nodes = placement.partition("=")
    return [int(n) for n in nodes.split(",")] if nodes else []


Matrix = dict[str, list[ParamValue]]


class WorkloadEntry(_Model):
    name: Name
    params: dict[str, ParamValue] = Field(default_factory=dict)
    matrix: Matrix = Field(default_factory=dict)
    repetitions: int | None = Field(default=None, ge=1, le=1000)


class CampaignSpec(_Model):
    name: Name
    testbed: str
    blade: Name | None = None
    repetitions: int = Field(default=1, ge=1, le=1000)
    warmup: int = Field(default=0, ge=0, le=100)
    timeout: float | None = Field(default=None, gt=0)
    sample_interval: float = Field(default=1.0, ge=0.2, le=60)
    workloads: list[WorkloadEntry] = Field(min_length=1)
    matrix: Matrix = Field(default_factory=dict)

    @field_validator("workloads", mode="before")
    @classmethod
    def _by_name(cls, workloads: Any) -> Any:
        """A bare name is an entry with only its name, so that an error in either
        form names its own key (``workloads[0].name``, ``workloads[1].repetitions``)."""
        if isinstance(workloads, list):
            return [{"name": w} if isinstance(w, str) else w for w in workloads]
        return workloads

    @field_validator("matrix")
    @classmethod
    def _non_empty(cls, matrix: Matrix) -> Matrix:
        for key, values in matrix.items():
            if not values:
                raise _KeyError(key, "is empty; give at least one value, or remove the key")
        return matrix


@dataclass(frozen=True)
class Run:
    """One run of the campaign: what to run, with which parameters, which repetition."""

    seq: int
    run_id: str
    workload: str
    rep: int
    params: dict[str, Any]  # every parameter: placement, links, knobs, the workload's own

    @property
    def placement(self) -> str:
        return str(self.params.get("placement", "default"))

    def links(self) -> dict[str, dict[str, Any]]:
        """memory blade -> {latency_ns, bandwidth_gbps} this run wants."""
        out: dict[str, dict[str, Any]] = {}
        for key, value in self.params.items():
            blade, dot, what = key.partition(".")
            if dot and what in LINK_KEYS:
                out.setdefault(blade, {})[what] = value
        return out

    def knobs(self) -> dict[str, Any]:
        return {k: self.params[k] for k in KNOBS if k in self.params}

    def workload_params(self, wl: WorkloadSpec) -> dict[str, Any]:
        return {k: v for k, v in self.params.items() if k in wl.params}


@dataclass(frozen=True)
class CampaignPlan:
    file: Path
    spec: CampaignSpec
    testbed_file: Path
    testbed: testbed.Plan
    blade: str
    workloads: dict[str, WorkloadSpec]
    runs: list[Run]
    warmups: list[Run]  # one per workload, not recorded

    @property
    def name(self) -> str:
        return self.spec.name

    def timeout_of(self, run: Run) -> float:
        return self.spec.timeout or self.workloads[run.workload].timeout

    def describe(self) -> list[str]:
        """One line per run, for --dry-run."""
        lines = []
        for r in self.runs:
            shown = " ".join(f"{k}={v}" for k, v in sorted(r.params.items()))
            lines.append(f"{r.seq:4d} {r.run_id}  {r.workload} rep={r.rep} {shown}")
        return lines


def load_campaign(file: str | Path) -> CampaignPlan:
    """Parse, validate and expand a campaign file (and its testbed and workloads)."""
    path = Path(file)
    spec = validate(CampaignSpec, load_yaml(path), str(path))
    where = str(path)
    tb_file = (path.parent / spec.testbed).resolve()
    if not tb_file.is_file():
        raise SpecError(f"{where}: testbed: {spec.testbed!r} is not a file (looked at {tb_file})",
                        hint="give the testbed YAML's path, relative to the campaign file")
    try:
        tb = testbed.plan(tb_file)
    except DdcError as exc:
        raise SpecError(f"{where}: testbed: {exc.message}", hint=exc.hint) from exc
    rack = tb.rack
    blade = spec.blade or rack.compute_blades[0].name
    blades = [b.name for b in rack.compute_blades]
    if blade not in blades:
        raise SpecError(f"{where}: blade: {blade!r} is not a compute blade of {tb_file.name}",
                        hint=f"use one of: {', '.join(blades)}")
    workloads: dict[str, WorkloadSpec] = {}
    for i, entry in enumerate(spec.workloads):
        try:
            workloads[entry.name] = load_workload(entry.name)
        except DdcError as exc:
            raise SpecError(f"{where}: workloads[{i}]: {exc.message}", hint=exc.hint) from exc
    _check_matrix(where, "matrix", spec.matrix, rack, blade, list(workloads.values()))
    for i, entry in enumerate(spec.workloads):
        wl = workloads[entry.name]
        for key in entry.params:
            if key not in wl.params:
                raise SpecError(f"{where}: workloads[{i}].params.{key}: {entry.name} has no parameter {key!r}",
                                hint=f"its parameters: {', '.join(wl.params) or 'none'}")
        _check_matrix(where, f"workloads[{i}].matrix", entry.matrix, rack, blade, [wl])
    runs, warmups = _expand(spec, rack, blade, workloads)
    return CampaignPlan(file=path.resolve(), spec=spec, testbed_file=tb_file, testbed=tb, blade=blade,
                        workloads=workloads, runs=runs, warmups=warmups)


def testbed_links(rack: Rack, blade: str) -> dict[str, dict[str, Any]]:
    """memory blade -> {latency_ns, bandwidth_gbps (if set)} as the testbed file gives
    them for ``blade``: what a run has unless its matrix says otherwise."""
    cb = next(b for b in rack.compute_blades if b.name == blade)
    out: dict[str, dict[str, Any]] = {}
    for node in cb.nodes:
        if node.memory_blade:
            out[node.memory_blade] = {"latency_ns": node.latency_ns}
            if node.bandwidth_gbps is not None:
                out[node.memory_blade]["bandwidth_gbps"] = node.bandwidth_gbps
    return out


def _check_matrix(where: str, prefix: str, matrix: Matrix, rack: Rack, blade: str,
                  workloads: list[WorkloadSpec]) -> None:
    cb = next(b for b in rack.compute_blades if b.name == blade)
    node_ids = [n.id for n in cb.nodes]
    used_blades = sorted(testbed_links(rack, blade))
    for key, values in matrix.items():
        at = f"{where}: {prefix}.{key}"
        mb, dot, what = key.partition(".")
        if key == "placement":
            for v in values:
                try:
                    check_placement(v)
                except ValueError as exc:
                    raise SpecError(f"{at}: {exc}") from None
                bad = [n for n in placement_nodes(str(v)) if n not in node_ids]
                if bad:
                    raise SpecError(f"{at}: {v!r} names node {bad[0]}, but {blade} has nodes "
                                    f"{', '.join(map(str, node_ids))}", hint="use a node that exists")
        elif dot and what in LINK_KEYS:
            if mb not in used_blades:
                raise SpecError(f"{at}: {blade} uses no memory blade {mb!r}",
                                hint=f"memory blades of {blade}: {', '.join(used_blades) or 'none'}")
            for v in values:
                if isinstance(v, bool) or not isinstance(v, int | float) or v <= 0:
                    raise SpecError(f"{at}: {v!r} is not a positive number")
                if what == "latency_ns" and v < rack.local_latency_ns:
                    raise SpecError(f"{at}: {v} is below local_latency_ns ({rack.local_latency_ns})",
                                    hint="remote memory cannot be faster than local memory in this model")
        elif key == "numa_balancing":
            if any(isinstance(v, bool) or v not in (0, 1, 2) for v in values):
                raise SpecError(f"{at}: values must be 0, 1 or 2")
        elif key == "demotion_enabled":
            if any(not isinstance(v, bool) for v in values):
                raise SpecError(f"{at}: values must be true or false")
        else:
            lacking = [w.name for w in workloads if key not in w.params]
            if lacking:
                raise SpecError(f"{at}: {', '.join(lacking)} has no parameter {key!r}",
                                hint="put it under that workload's own `matrix:` in `workloads:`, "
                                     "or use placement, <memory blade>.latency_ns, "
                                     "<memory blade>.bandwidth_gbps, numa_balancing, demotion_enabled")


def _combos(matrix: Matrix) -> list[dict[str, Any]]:
    keys = list(matrix)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(matrix[k] for k in keys))]


def run_id(workload: str, params: dict[str, Any], rep: int) -> str:
    key = json.dumps({"workload": workload, "params": params, "rep": rep}, sort_keys=True)
    return f"{workload}-{hashlib.sha256(key.encode()).hexdigest()[:10]}-r{rep}"


def _expand(spec: CampaignSpec, rack: Rack, blade: str,
            workloads: dict[str, WorkloadSpec]) -> tuple[list[Run], list[Run]]:
    """Every run, in order: repetitions outermost, so that slow drift of the host
    spreads over every combination instead of biasing the last ones (a workload
    with more repetitions than the others runs alone in the last rounds). Each run's
    parameters are complete: the testbed's link values and the workload's
    defaults where the matrix does not set them."""
    base: dict[str, Any] = {"placement": "default"}
    for mb, link in testbed_links(rack, blade).items():
        base.update({f"{mb}.{key}": value for key, value in link.items()})
    runs: list[Run] = []
    warmups: list[Run] = []
    reps = [entry.repetitions or spec.repetitions for entry in spec.workloads]
    for rep in range(max(reps)):
        for entry, entry_reps in zip(spec.workloads, reps, strict=True):
            if rep >= entry_reps:
                continue
            wl = workloads[entry.name]
            for combo in _combos({**spec.matrix, **entry.matrix}):
                params = {**base, **wl.params, **entry.params, **combo}
                if rep == 0 and spec.warmup and not any(w.workload == wl.name for w in warmups):
                    warmups += [Run(seq=-1, run_id=f"warmup-{wl.name}-{i}", workload=wl.name, rep=-1,
                                    params=params) for i in range(spec.warmup)]
                runs.append(Run(seq=len(runs), run_id=run_id(wl.name, params, rep), workload=wl.name,
                                rep=rep, params=params))
    return runs, warmups
