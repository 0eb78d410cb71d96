"""Workload definitions: one YAML file per workload in ``workloads/``.

A workload is data, not code. Its file names the Debian packages it needs in the
image, its parameters with their defaults, shell steps (setup, the timed command,
teardown) as jinja2 templates over those parameters, a timeout, and regular
expressions that pull its metrics out of its output::

    name: sysbench-memory
    packages: [sysbench]
    params: {threads: 2, size: 1G}
    command: "{{ numactl }} sysbench memory --threads={{ threads }} --memory-total-size={{ size }} run"
    timeout: 120
    metrics:
      - {name: mib_per_s, regex: '([0-9.]+) MiB/sec', unit: MiB/s, better: higher}
    primary: mib_per_s

Besides the workload's own parameters, every template sees ``numactl`` (the
placement prefix of the run, e.g. ``numactl --membind=1``; empty for
``default``) and ``run_dir`` (a scratch directory in the guest, removed after
the run). If neither setup nor command mentions ``numactl``, the command is
prefixed with it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import jinja2
import jinja2.meta
from pydantic import AfterValidator, Field, model_validator

from .errors import SpecError
from .spec import Name, _KeyError, _Model, load_yaml, validate

WORKLOADS_DIR = Path(__file__).resolve().parent.parent / "workloads"

# Names the runner itself gives every template; a workload cannot redefine them.
RESERVED = ("numactl", "run_dir", "placement", "threads_all")

_PKG_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")

_ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)  # noqa: S701 (shell, not HTML)


def _template(text: str) -> str:
    try:
        _ENV.parse(text)
    except jinja2.TemplateSyntaxError as exc:
        raise ValueError(f"not a valid template: {exc.message} (line {exc.lineno}); "
                         "write parameters as {{ name }}") from exc
    return text


def _regex(text: str) -> str:
    try:
        pattern = re.compile(text, re.MULTILINE)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression: {exc}") from exc
    if pattern.groups != 1:
        raise ValueError(f"has {pattern.groups} groups; use exactly one capturing group "
                         "around the number, and (?:...) for the others")
    return text


def _package(name: str) -> str:
    if not _PKG_RE.match(name):
        raise ValueError(f"{name!r} is not a Debian package name")
    return name


Template = Annotated[str, AfterValidator(_template)]
Regex = Annotated[str, AfterValidator(_regex)]
Package = Annotated[str, AfterValidator(_package)]


class Better(StrEnum):
    HIGHER = "higher"
    LOWER = "lower"


class Source(StrEnum):
    STDOUT = "stdout"
    STDERR = "stderr"


class MetricSpec(_Model):
    name: Name
    regex: Regex
    unit: str = ""
    better: Better = Better.HIGHER
    source: Source = Source.STDOUT
    scale: float = 1.0  # multiply the captured number (e.g. 1e-3 for ms -> s)
    optional: bool = False  # a run whose output lacks it is still ok


ParamValue = str | int | float | bool


class WorkloadSpec(_Model):
    name: Name
    description: str = ""
    packages: list[Package] = Field(default_factory=list)
    params: dict[Name, ParamValue] = Field(default_factory=dict)
    setup: list[Template] = Field(default_factory=list)
    command: Template
    teardown: list[Template] = Field(default_factory=list)
    timeout: float = Field(default=300.0, gt=0)
    metrics: list[MetricSpec] = Field(min_length=1)
    primary: Name | None = None

    @model_validator(mode="after")
    def _check(self) -> WorkloadSpec:
        for key in self.params:
            if key in RESERVED:
                raise _KeyError(f"params.{key}", f"{key!r} is set by the runner for every run; rename it")
        names = [m.name for m in self.metrics]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise _KeyError(f"metrics[{i}].name", f"{name!r} appears twice; metric names must be unique")
        if self.primary is not None and self.primary not in names:
            raise _KeyError("primary", f"{self.primary!r} is not one of the metrics ({', '.join(names)})")
        known = set(self.params) | set(RESERVED)
        for where, text in self._templates():
            for var in jinja2.meta.find_undeclared_variables(_ENV.parse(text)):
                if var not in known:
                    raise _KeyError(where, f"uses {{{{ {var} }}}}, which is not a parameter; "
                                           f"add it under params: with a default")
        return self

    def _templates(self) -> list[tuple[str, str]]:
        out = [(f"setup[{i}]", t) for i, t in enumerate(self.setup)]
        out.append(("command", self.command))
        out += [(f"teardown[{i}]", t) for i, t in enumerate(self.teardown)]
        return out

    @property
    def primary_metric(self) -> MetricSpec:
        name = self.primary or self.metrics[0].name
        return next(m for m in self.metrics if m.name == name)


@dataclass(frozen=True)
class Steps:
    """One run's shell steps, rendered."""

    setup: str
    command: str
    teardown: str




def render(wl: WorkloadSpec, params: dict[str, Any], numactl: str, run_dir: str) -> Steps:
    """Render the steps with the workload's defaults overridden by ``params``."""
    values = {**wl.params, **{k: v for k, v in params.items() if k in wl.params},
              "numactl": numactl, "run_dir": run_dir}
    command = wl.command
    if not any("numactl" in t for t in [*wl.setup, wl.command]):
        command = "{{ numactl }} " + command

    def one(text: str) -> str:
        return _ENV.from_string(text).render(values).strip()

    return Steps(setup="\n".join(one(t) for t in wl.setup), command=one(command),
                 teardown="\n".join(one(t) for t in wl.teardown))


def parse_metrics(wl: WorkloadSpec, stdout: str, stderr: str) -> tuple[dict[str, float], list[str]]:
    """Metrics found in the output, and the names of required metrics that were not."""
    found: dict[str, float] = {}
    missing: list[str] = []
    for m in wl.metrics:
        text = stdout if m.source == Source.STDOUT else stderr
        hits = re.findall(m.regex, text, re.MULTILINE)
        value = None
        if hits:
            try:
                value = float(hits[-1]) * m.scale
            except ValueError:
                value = None
        if value is None:
            if not m.optional:
                missing.append(m.name)
            continue
        found[m.name] = value
    return found, missing


# -- loading ---------------------------------------------------------------------------------------

def workload_dirs() -> list[Path]:
    """Where workloads are looked up by name: the directories in ``DDC_WORKLOADS``
    (colon-separated, first match wins), then the project's ``workloads/``."""
    extra = [Path(p) for p in os.environ.get("DDC_WORKLOADS", "").split(":") if p]
    return [*extra, WORKLOADS_DIR]


def workload_names(root: Path = WORKLOADS_DIR) -> list[str]:
    return sorted(p.stem for p in root.glob("*.yaml"))


def workload_file(name: str, root: Path | None = None) -> Path:
    dirs = [root] if root is not None else workload_dirs()
    for d in dirs:
        path = d / f"{name}.yaml"
        if path.is_file():
            return path
    known = ", ".join(sorted({n for d in dirs for n in workload_names(d)})) or "none"
    raise SpecError(f"workload {name!r}: no file {name}.yaml in {', '.join(map(str, dirs))}",
                    hint=f"known workloads: {known}; add one as workloads/<name>.yaml")


def load_workload(name_or_file: str | Path, root: Path | None = None) -> WorkloadSpec:
    """A workload by name (``workloads/<name>.yaml``) or by path."""
    path = Path(name_or_file)
    if path.suffix not in (".yaml", ".yml"):
        path = workload_file(str(name_or_file), root)
    wl = validate(WorkloadSpec, load_yaml(path), str(path))
    if wl.name != path.stem:
        raise SpecError(f"{path}: name: {wl.name!r} differs from the file name",
                        hint=f"name the file {wl.name}.yaml, or set name: {path.stem}")
    return wl


def all_packages(root: Path = WORKLOADS_DIR) -> list[str]:
    """Every package some workload needs: the image recipe installs them all."""
    return sorted({p for n in workload_names(root) for p in load_workload(n, root).packages})
