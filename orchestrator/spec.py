"""The testbed file: YAML in, frozen and validated models out.

Everything a user can get wrong is caught here, before anything is created, and
reported as one :class:`SpecError` whose message starts with the key path
(``compute_blades[1].memory: '4X' is not a size; use e.g. 512M, 4G``).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from .errors import SpecError

M = TypeVar("M", bound=BaseModel)

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB

_UNITS = {"": 1, "K": KiB, "M": MiB, "G": GiB, "T": TiB}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)
SIZE_HINT = "use e.g. 512M, 4G (suffixes K, M, G, T; powers of 1024)"

# Names become libvirt domain names, file names and hostnames: keep them boring.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")
NAME_HINT = "use 1-32 letters, digits, '-' or '_', starting with a letter or digit"

# Linux on x86-64 manages memory in 128 MiB sections; a smaller NUMA node is
# not reliably reported by the guest, and QEMU wants 2 MiB-aligned backends.
MIN_SLICE = 128 * MiB
MIN_LOCAL = 256 * MiB
ALIGN = 2 * MiB


def parse_bytes(value: Any) -> int:
    """``'32K'`` -> 32768. Integers are bytes."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size; {SIZE_HINT}")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (m := _SIZE_RE.match(value)):
        number, unit = m.groups()
        size = int(float(number) * _UNITS[unit.upper()])
    else:
        raise ValueError(f"{value!r} is not a size; {SIZE_HINT}")
    if size <= 0:
        raise ValueError(f"{value!r} is not a positive size; {SIZE_HINT}")
    return size


def parse_size(value: Any) -> int:
    """A memory size: ``'4G'`` -> 4294967296, a multiple of 2 MiB."""
    size = parse_bytes(value)
    if size % ALIGN:
        rounded = format_size(size // ALIGN * ALIGN or ALIGN)
        raise ValueError(f"{value!r} is not a multiple of 2M; round it, e.g. to {rounded}")
    return size


def format_size(size: int) -> str:
    for unit in ("T", "G", "M", "K"):
        if size % _UNITS[unit] == 0:
            return f"{size // _UNITS[unit]}{unit}"
    return str(size)


def check_name(value: Any) -> str:
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise ValueError(f"{value!r} is not a safe name; {NAME_HINT}")
    return value


Size = Annotated[int, BeforeValidator(parse_size)]
Bytes = Annotated[int, BeforeValidator(parse_bytes)]
Name = Annotated[str, BeforeValidator(check_name)]


class Accel(StrEnum):
    AUTO = "auto"
    KVM = "kvm"
    TCG = "tcg"


# Paced mode's cost of one instruction: one cycle at 2.5 GHz.  In-order
# timing models (gem5's TimingSimpleCPU) charge a cycle per instruction and
# the memory hierarchy's latency on top; 2.5 GHz is within the base clocks of
# current server CPUs (README, "Paced timing").
DEFAULT_CPI_NS = 0.4
MAX_DILATION = 100_000


def check_dilation(value: Any) -> float | str:
    if value == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, int | float) or not 1 <= value <= MAX_DILATION:
        raise ValueError(f"{value!r} is not a dilation; use auto, or a number from 1 to {MAX_DILATION} "
                         "(how many times slower than the model the guest runs)")
    return float(value)


Dilation = Annotated[float | str, BeforeValidator(check_dilation)]

# One kernel parameter: it goes into the domain XML's <cmdline> unquoted.
_KERNEL_ARG_RE = re.compile(r"^[A-Za-z0-9_.-]+(=[A-Za-z0-9_.,:/+-]+)?$")


def check_kernel_arg(value: Any) -> str:
    if not isinstance(value, str) or not _KERNEL_ARG_RE.match(value):
        raise ValueError(f"{value!r} is not a kernel parameter; use NAME or NAME=VALUE without spaces or "
                         "quotes, e.g. nohz_full=1")
    return value


KernelArg = Annotated[str, BeforeValidator(check_kernel_arg)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class Mode(StrEnum):
    """What the latency plugin does with the time remote accesses cost."""

    INJECT = "inject"  # stall the vCPU for real: programs and their clocks see it
    ACCOUNT = "account"  # add it to a modelled clock only (fast runs)
    PACED = "paced"  # every vCPU runs at k x a model clock: timing independent of the host's load
    OFF = "off"  # no plugin: plain TCG speed, NUMA/HMAT topology only


class Scope(StrEnum):
    PRIVATE = "private"  # one per vCPU
    SHARED = "shared"  # one per compute blade


MAX_CACHE_LEVELS = 4  # the plugin's limit


class CacheLevelSpec(_Model):
    name: Name
    size: Bytes
    ways: int = Field(ge=1, le=64)
    line: int = Field(default=64, ge=8, le=4096)
    scope: Scope = Scope.PRIVATE
    # Modelled hit time, used only to report the average memory access time.
    hit_ns: float = Field(default=1.0, ge=0, le=1_000_000)

    @model_validator(mode="after")
    def _shape(self) -> CacheLevelSpec:
        if self.line & (self.line - 1):
            raise _KeyError("line", f"{self.line} is not a power of two; use e.g. 64")
        if self.size % (self.ways * self.line):
            raise _KeyError("size", f"{format_size(self.size)} is not a multiple of ways x line "
                                    f"({self.ways} x {self.line}); change the size or the ways")
        return self


DEFAULT_CACHES = (
    CacheLevelSpec(name="l1d", size=32 * KiB, ways=8, line=64, scope=Scope.PRIVATE, hit_ns=1),
    CacheLevelSpec(name="l2", size=1 * MiB, ways=16, line=64, scope=Scope.PRIVATE, hit_ns=4),
    CacheLevelSpec(name="llc", size=16 * MiB, ways=16, line=64, scope=Scope.SHARED, hit_ns=15),
)


class MemoryBladeSpec(_Model):
    name: Name
    size: Size
    latency_ns: int = Field(gt=0, le=1_000_000)
    bandwidth_gbps: float | None = Field(default=None, gt=0, le=10_000)
    # SLIT distance from a compute node; derived from the latency when absent.
    distance: int | None = Field(default=None, ge=11, le=254)


class RemoteSliceSpec(_Model):
    blade: Name
    size: Size


class ComputeBladeSpec(_Model):
    name: Name
    vcpus: int = Field(ge=1, le=64)
    memory: Size
    remote: tuple[RemoteSliceSpec, ...] = ()

    @model_validator(mode="after")
    def _sizes(self) -> ComputeBladeSpec:
        if self.memory < MIN_LOCAL:
            raise _KeyError("memory", f"{format_size(self.memory)} is too small to boot a guest; "
                                      f"use at least {format_size(MIN_LOCAL)}")
        for i, piece in enumerate(self.remote):
            if piece.size < MIN_SLICE:
                raise _KeyError(f"remote[{i}].size",
                                f"{format_size(piece.size)} is smaller than a Linux memory section; "
                                f"use at least {format_size(MIN_SLICE)}")
        return self


class TestbedSpec(_Model):
    __test__ = False  # not a pytest class, despite the name
    name: Name
    accel: Accel = Accel.AUTO
    image: Name = "debian-bookworm"
    uri: str = "qemu:///system"
    local_latency_ns: int = Field(default=100, gt=0, le=1_000_000)
    local_bandwidth_gbps: float = Field(default=50.0, gt=0, le=10_000)
    mode: Mode = Mode.INJECT
    # Paced mode: the guest runs k times slower than the model machine
    # (`auto`: k measured on this host at `up`), whose instructions cost cpi_ns.
    dilation: Dilation = "auto"
    cpi_ns: float = Field(default=DEFAULT_CPI_NS, gt=0, le=1_000_000)
    # Added to every compute blade's kernel command line (e.g. nohz_full=1).
    kernel_args: tuple[KernelArg, ...] = ()
    caches: tuple[CacheLevelSpec, ...] = Field(default=DEFAULT_CACHES, max_length=MAX_CACHE_LEVELS)
    memory_blades: tuple[MemoryBladeSpec, ...] = ()
    compute_blades: tuple[ComputeBladeSpec, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _rack(self) -> TestbedSpec:
        seen: dict[str, str] = {}
        for kind, names in (("memory_blades", [mb.name for mb in self.memory_blades]),
                            ("compute_blades", [cb.name for cb in self.compute_blades])):
            for i, name in enumerate(names):
                if name in seen:
                    raise _KeyError(f"{kind}[{i}].name", f"{name!r} is already the name of {seen[name]}; "
                                                         "give every blade a unique name")
                seen[name] = f"{kind}[{i}]"
        self._check_caches()
        if self.mode == Mode.PACED and self.accel == Accel.KVM:
            raise _KeyError("mode", "paced needs TCG (the plugin paces emulated vCPUs), but accel is kvm; "
                                    "use accel: tcg or auto, or mode: off")
        pools = {mb.name: mb for mb in self.memory_blades}
        used = dict.fromkeys(pools, 0)
        for i, cb in enumerate(self.compute_blades):
            for j, piece in enumerate(cb.remote):
                where = f"compute_blades[{i}].remote[{j}]"
                if piece.blade not in pools:
                    known = ", ".join(pools) or "none defined"
                    raise _KeyError(f"{where}.blade", f"{piece.blade!r} is not a memory blade "
                                                      f"(memory_blades: {known}); name one of them")
                pool = pools[piece.blade]
                if piece.size > pool.size:
                    raise _KeyError(f"{where}.size",
                                    f"{format_size(piece.size)} is larger than memory blade "
                                    f"{pool.name!r} ({format_size(pool.size)}); shrink the slice "
                                    "or grow the blade")
                used[piece.blade] += piece.size
        for i, mb in enumerate(self.memory_blades):
            # The plugin charges latency_ns - local_latency_ns per remote access and
            # cannot charge less than nothing: a faster blade would silently cost 0.
            if mb.latency_ns < self.local_latency_ns:
                raise _KeyError(f"memory_blades[{i}].latency_ns",
                                f"{mb.latency_ns} is below local_latency_ns ({self.local_latency_ns}); remote "
                                "memory cannot be faster than local memory in this model: raise it to at least "
                                f"{self.local_latency_ns}, or lower local_latency_ns")
            if used[mb.name] > mb.size:
                raise _KeyError(f"memory_blades[{i}].size",
                                f"slices of {mb.name!r} add up to {format_size(used[mb.name])}, more "
                                f"than its {format_size(mb.size)}; grow the blade or shrink the slices")
        return self

    def _check_caches(self) -> None:
        names: set[str] = set()
        shared_seen = False
        for i, level in enumerate(self.caches):
            if level.name in names:
                raise _KeyError(f"caches[{i}].name", f"{level.name!r} is used twice; name each level once")
            names.add(level.name)
            if level.scope == Scope.SHARED:
                shared_seen = True
            elif shared_seen:
                raise _KeyError(f"caches[{i}].scope", "a private level cannot come after a shared one; "
                                                      "list the levels nearest first")
        if self.caches and self.caches[0].scope != Scope.PRIVATE:
            raise _KeyError("caches[0].scope", "the first level must be private (one per vCPU)")

    def total_memory(self) -> int:
        """Host RAM the rack needs: every blade's local memory plus every pool."""
        return sum(cb.memory for cb in self.compute_blades) + sum(mb.size for mb in self.memory_blades)


def check_image(spec: TestbedSpec, recipes: Collection[str], source: str) -> None:
    """Refuse an ``image:`` that names no recipe. ``recipes`` are the names the caller
    found (``image.recipe_names()``): this module reads no directory of its own."""
    if spec.image not in recipes:
        fix = (f"use one of: {', '.join(sorted(recipes))}" if recipes
               else "no recipe exists (no images/*/recipe.yaml, or DDC_IMAGES_DIR points elsewhere)")
        raise SpecError(f"{source}: image: {spec.image!r} is not an image recipe; {fix}")


class _KeyError(ValueError):
    """A model-level check that knows which key (relative to the model) is wrong."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


# -- loading ---------------------------------------------------------------------------------------

def load_testbed(path: str | Path) -> TestbedSpec:
    """Read and validate a testbed file. Raises SpecError naming the file and key."""
    path = Path(path)
    data = load_yaml(path)
    return validate(TestbedSpec, data, str(path))


def load_yaml(path: Path) -> Any:
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(f"{path}: cannot read: {exc.strerror}",
                        hint="check the path of the testbed file") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(f"{where}: malformed YAML: {problem}",
                        hint="fix the YAML syntax (indentation, ':' after keys, quotes)") from exc
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a mapping of keys at the top level, got "
                        f"{type(data).__name__}", hint="start the file with 'name: ...'")
    return data


def validate(model: type[M], data: Any, source: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = _root_causes(exc.errors())
        first = _describe(model, errors[0])
        more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
        raise SpecError(f"{source}: {first}{more}") from exc


def _root_causes(errors: list[Any]) -> list[Any]:
    """Drop errors that only echo a deeper one (a list 'too short' because its item
    failed), and put unknown keys first: a typo also makes the real key 'missing'."""
    locs = [tuple(e["loc"]) for e in errors]
    deepest = [e for e, loc in zip(errors, locs, strict=True)
               if not any(len(o) > len(loc) and o[:len(loc)] == loc for o in locs)]
    return sorted(deepest, key=lambda e: e["type"] != "extra_forbidden")


def key_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _describe(model: type[BaseModel], error: Any) -> str:
    loc = tuple(error["loc"])
    kind = error["type"]
    path = key_path(loc)
    ctx = error.get("ctx") or {}
    cause = ctx.get("error")
    if isinstance(cause, _KeyError):
        full = key_path(loc + tuple(_split_key(cause.key)))
        return f"{full}: {cause.message}"
    if kind == "extra_forbidden":
        fields = _fields_at(model, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), fields, n=1)
        guess = f"did you mean {close[0]!r}? " if close else ""
        return f"{path}: unknown key; {guess}valid keys here: {', '.join(fields)}"
    if kind == "missing":
        return f"{path}: required key is missing; add it"
    if kind == "value_error" and cause is not None:
        return f"{path}: {cause}"
    bad = error.get("input")
    shown = repr(bad) if not isinstance(bad, dict | list) else type(bad).__name__
    if kind == "too_short":
        return f"{path}: is empty; add at least {ctx.get('min_length', 1)} entry"
    if kind == "enum":
        return f"{path}: {shown} is not valid; use one of {ctx.get('expected')}"
    return f"{path}: {shown}: {error['msg']}"


def _split_key(key: str) -> list[str | int]:
    parts: list[str | int] = []
    for token in re.findall(r"[^.\[\]]+|\[\d+\]", key):
        parts.append(int(token[1:-1]) if token.startswith("[") else token)
    return parts


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The field names valid at ``loc`` (for 'unknown key' messages)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part)
        if field is None:
            return []
        current = _inner_model(field.annotation)
        if current is None:
            return []
    return list(current.model_fields)


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None
