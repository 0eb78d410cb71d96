"""Testbed life cycle: up, down, status.

``up`` journals every resource in the testbed state before creating it (see
``state``), so whatever stops it (an error, a blade that never boots, Ctrl-C,
a crash) leaves something ``down`` removes completely. ``down`` also sweeps by
name (domains with the testbed's prefix and metadata, the testbed's pool
directory), so it works even when the journal is gone.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import image as images
from . import keys, memmap, pacing, paths, plugin, pools, state
from .errors import DdcError, HypervisorError, SpecError, StateError
from .guest import Endpoint, Ready, wait_ready
from .hierarchy import Figures, figures
from .hypervisor import ABSENT, Hypervisor, kvm_works
from .render import DomainConfig, domain_xml
from .runner import run
from .spec import MAX_DILATION, TestbedSpec, check_image, check_name, format_size, load_testbed
from .state import BladeRecord, Phase, TestbedState
from .topology import ComputeBlade, Rack, check_fits_host, host_memory, resolve

LOG = logging.getLogger(__name__)

BOOT_TIMEOUT = float(os.environ.get("DDC_BOOT_TIMEOUT", "240"))

Say = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


# -- loading ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    spec_file: Path
    spec: TestbedSpec
    rack: Rack
    digest: str


def plan(spec_file: str | Path) -> Plan:
    """Parse, validate and resolve a testbed file; touch nothing."""
    path = Path(spec_file)
    spec = load_testbed(path)
    check_image(spec, images.recipe_names(), str(path))
    check_fits_host(spec, host_memory(), str(path))
    digest = hashlib.sha256(spec.model_dump_json().encode()).hexdigest()[:16]
    return Plan(path.resolve(), spec, resolve(spec, paths.pool_root()), digest)


def testbed_name(file_or_name: str) -> str:
    """``down``/``status`` take a testbed file, or the bare name of a testbed whose
    file is gone or broken. Only the name is read: ``down`` must work even when
    the rack would no longer fit this host."""
    if Path(file_or_name).is_file():
        return load_testbed(file_or_name).name
    try:
        return check_name(file_or_name)
    except ValueError as exc:
        raise SpecError(f"{file_or_name}: no such testbed file, and {exc}",
                        hint="give the YAML file used with `ddc up`, or the testbed's name") from exc


# -- up ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BladeView:
    """One compute blade as `up` and `status` report it."""

    name: str
    domain: str
    state: str
    endpoint: str
    nodes: list[dict[str, Any]]
    boot_s: float | None = None


def up(spec_file: str | Path, *, say: Say = _quiet, boot_timeout: float = BOOT_TIMEOUT) -> list[BladeView]:
    p = plan(spec_file)
    rack = p.rack
    with state.locked(rack.name):
        old = state.load(rack.name)
        if old is not None:
            return _already_up(old, rack, say)
        _check_no_leftovers(rack)
        _check_pool_room(rack)
        say(f"image {rack.image}")
        img = images.build_image(rack.image, progress=say)
        accel = choose_accel(rack.accel, img.kernel, say, rack.mode)
        use_plugin = rack.mode != "off" and accel == "tcg"
        if rack.mode != "off" and not use_plugin:
            say(f"mode {rack.mode}: the latency plugin needs TCG and cannot run under KVM; the blades get "
                "the NUMA/HMAT topology without latency injection or statistics")
        lib = plugin.library() if use_plugin else None
        st = TestbedState(name=rack.name, spec_file=str(p.spec_file), spec_digest=p.digest,
                          uri=rack.uri, accel=accel, plugin=use_plugin, mode=rack.mode if use_plugin else "",
                          cpi_ns=rack.cpi_ns if rack.mode == "paced" else 0.0,
                          hit_ns={c.name: c.hit_ns for c in rack.caches}, image_dir=str(img.directory))
        st.save()
        try:
            with Hypervisor(rack.uri) as hv:
                boot = _create(rack, st, img, lib, hv, say, boot_timeout)
        except BaseException as exc:
            # Keep the journal (and console logs) for `down` and for a post-mortem,
            # but stop the guests: a half-booted rack only burns CPU.
            st.phase = Phase.FAILED
            st.error = str(exc) or type(exc).__name__
            st.save()
            _stop_all(st)
            if isinstance(exc, DdcError):
                exc.hint = exc.hint or f"`ddc down {spec_file}` removes what was created"
            raise
        st.phase = Phase.UP
        st.save()
    return [_view(st, name, "running", boot.get(name)) for name in st.blades]


def _already_up(old: TestbedState, rack: Rack, say: Say) -> list[BladeView]:
    if old.phase != Phase.UP:
        raise StateError(f"testbed {rack.name!r} is in state {old.phase!r} from an `up` that did not finish"
                         + (f" ({old.error})" if old.error else ""),
                         hint=f"run `ddc down {old.spec_file}` first")
    views = status_of(old)
    if any(v.state != "running" for v in views):
        raise StateError(f"testbed {rack.name!r} is up, but not every blade is running: "
                         + ", ".join(f"{v.name} {v.state}" for v in views),
                         hint=f"`ddc down {old.spec_file}` and `ddc up` again")
    say(f"testbed {rack.name} is already up; nothing changed")
    return views


def _check_no_leftovers(rack: Rack) -> None:
    """Refuse to start over remains of an earlier run whose state is gone."""
    with Hypervisor(rack.uri) as hv:
        stale = hv.domains_of(rack.name)
    if stale or (paths.pool_root() / rack.name).exists():
        what = ", ".join(stale) or str(paths.pool_root() / rack.name)
        raise StateError(f"testbed {rack.name!r} has no state, but remains of an earlier run exist: {what}",
                         hint=f"`ddc down {rack.name}` removes them")


def choose_accel(wanted: str, kernel: Path, say: Say = _quiet, mode: str = "inject") -> str:
    if wanted == "tcg":
        return "tcg"
    if mode == "paced":  # the file refuses paced with kvm; auto means TCG then
        say("accelerator: tcg (mode paced needs TCG)")
        return "tcg"
    works = kvm_works(kernel)
    if wanted == "kvm" and not works:
        raise HypervisorError("accel: kvm was asked for, but KVM cannot boot a guest on this host "
                              "(trial boot failed or hung)",
                              hint="use `accel: tcg` or `accel: auto`; check /dev/kvm and nested virtualization")
    accel = "kvm" if works else "tcg"
    if wanted == "auto":
        say(f"accelerator: {accel} (KVM trial boot {'worked' if works else 'failed'})")
    return accel


def _check_pool_room(rack: Rack) -> None:
    need = sum(mb.size for mb in rack.memory_blades)
    root = paths.pool_root()
    probe = root if root.exists() else root.parent
    free = pools.shm_free(probe)
    if need > free:
        raise SpecError(f"memory_blades[*].size: the pools need {format_size(need)} but {probe} has only "
                        f"{format_size(free // (1 << 20) << 20)} free",
                        hint="shrink the memory blades, or free /dev/shm")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _create(rack: Rack, st: TestbedState, img: images.GuestImage, lib: Path | None, hv: Hypervisor, say: Say,
            boot_timeout: float) -> dict[str, float]:
    st.directory.mkdir(parents=True, exist_ok=True, mode=0o711)
    if lib is not None:
        st.record("dir", path=st.run_dir)
        st.run_dir.mkdir(parents=True, exist_ok=True)
        pools.hand_to_qemu(st.run_dir, mode=0o700)
    for blade in rack.compute_blades:
        st.blades[blade.name] = BladeRecord(domain=blade.domain, ssh_port=free_port(),
                                            nodes=_layout(blade))
    st.save()

    st.record("file", path=st.client_key)
    client_pub = keys.write_keypair(st.client_key, f"ddc@{rack.name}")
    st.record("file", path=st.known_hosts)

    st.record("dir", path=paths.pool_root() / rack.name)
    for mb in rack.memory_blades:
        st.record("pool", path=mb.pool_dir)
        pools.create_pool(mb)
        for piece in mb.slices:
            st.record("file", path=piece.path)
            pools.create_slice(piece)
        say(f"memory blade {mb.name}: {format_size(mb.size)} pool, {len(mb.slices)} slices")

    known: list[str] = []
    configs = []
    for blade in rack.compute_blades:
        port = st.blades[blade.name].ssh_port
        bdir = st.blade_dir(blade.name)
        st.record("dir", path=bdir)
        bdir.mkdir(parents=True, exist_ok=True, mode=0o711)
        os.chmod(bdir.parent, 0o711)
        host_key = bdir / "ssh_host_ed25519_key"
        known.append(keys.known_hosts_line(port, keys.write_keypair(host_key, f"root@{blade.name}")))
        (bdir / "hostname").write_text(blade.name + "\n")
        (bdir / "authorized_keys").write_text(client_pub + "\n")
        for f in (host_key, bdir / "hostname", bdir / "authorized_keys"):
            pools.hand_to_qemu(f)
        overlay = bdir / "root.qcow2"
        run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(img.rootfs), str(overlay)])
        configs.append(domain_config(rack, blade, st, img, bdir, lib))
    st.known_hosts.write_text("\n".join(known) + "\n")

    for cfg in configs:
        xml = domain_xml(cfg)
        (st.blade_dir(cfg.blade.name) / "domain.xml").write_text(xml)
        st.record("domain", name=cfg.blade.domain)
        hv.define(xml)
        # Paused first: later stages (the latency plugin's address map) need the
        # memory layout before the guest runs.
        hv.start(cfg.blade.domain, paused=True)
        if lib is not None:
            _load_map(hv, st, rack, cfg.blade)
        hv.resume(cfg.blade.domain)
        say(f"compute blade {cfg.blade.name}: started ({st.accel}), ssh on 127.0.0.1:{cfg.ssh_port}")

    boot = _wait_all(rack, st, hv, say, boot_timeout)
    if lib is not None:
        # The blades booted at plain-TCG speed (the plugin starts inactive); the
        # model and the statistics begin now, with zeroed counters.
        for blade in rack.compute_blades:
            with plugin.Control(st.plugin_socket(blade.name)) as ctl:
                ctl.request("activate")
                ctl.request("reset")
        say(f"latency plugin active on every blade (mode {rack.mode})")
        if rack.mode == "paced":
            _pace(rack, st, say)
    return boot


def _pace(rack: Rack, st: TestbedState, say: Say) -> None:
    """Paced mode's k: the file's number, or measured here (dilation: auto)."""
    sockets = {b.name: st.plugin_socket(b.name) for b in rack.compute_blades}
    if isinstance(rack.dilation, float):
        k = rack.dilation
    else:
        cal = pacing.calibrate(sockets, {b: endpoint(st, b) for b in sockets}, say)
        k = cal.dilation
        say(f"paced: {cal.describe()}")
    pacing.set_dilation(sockets, k)
    st.dilation = k
    st.save()
    say(f"paced: the guests run {k:g}x slower than the model (cpi_ns {rack.cpi_ns:g}); "
        f"divide what they measure by {k:g} for model time")


@contextlib.contextmanager
def running(data: dict[str, Any], *, say: Say = _quiet) -> Iterator[TestbedState]:
    """A testbed made from ``data`` (a testbed file's mapping), up for the
    ``with`` block and down after it, whatever happens in it; what an earlier,
    interrupted run of the same name left goes first. For scripts such as the
    benchmarks in bench/."""
    name = data["name"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data))
        down(name)
        try:
            up(path, say=say)
            yield load_up(name)
        finally:
            down(name)


def restart_blade(name: str, blade: str, *, say: Say = _quiet, boot_timeout: float = BOOT_TIMEOUT) -> float:
    """Bring one compute blade of a testbed that is up back after its QEMU died
    (crash, kill, `ddc fail`). Its disk overlay and its pool slices are kept; the
    plugin gets its map again and starts with zeroed counters and the testbed
    file's link settings. Returns the seconds until SSH answered."""
    st = load_up(name)
    endpoint(st, blade)  # validates the name
    rack = plan(st.spec_file).rack
    cb = next(b for b in rack.compute_blades if b.name == blade)
    with state.locked(name), Hypervisor(st.uri) as hv:
        hv.destroy(cb.domain)  # a crashed or paused QEMU may linger
        hv.start(cb.domain, paused=True)
        if st.plugin:
            _load_map(hv, st, rack, cb)
        hv.resume(cb.domain)
        ready = wait_ready(endpoint(st, blade), boot_timeout,
                           lambda: hv.state(cb.domain) in ("running", "paused", "blocked"))
        _say_degraded(blade, ready, say)
        seconds = ready.seconds
        if st.plugin:
            with plugin.Control(st.plugin_socket(blade)) as ctl:
                ctl.request("activate")
                if st.dilation:  # paced: the k measured at up, not the file's auto
                    ctl.request("set_pacing", dilation=st.dilation)
                ctl.request("reset")
    say(f"compute blade {blade}: restarted, booted ({ready.state}) after {seconds:.1f} s")
    return seconds


def _load_map(hv: Hypervisor, st: TestbedState, rack: Rack, blade: ComputeBlade) -> None:
    """Give the blade's plugin its address map, in the plugin's terms: its NUMA
    nodes, and the Rack MMU regions it owns (see ``load_map``)."""
    ramblocks = hv.hmp(blade.domain, "info ramblock")
    ranges = memmap.plugin_map(blade, ramblocks, hv.hmp(blade.domain, "info mtree"))
    owned = [r for r in st.regions.values() if r.get("owner") == blade.name and r.get("state") == "attached"]
    links = []
    if owned:
        pci = hv.qmp(blade.domain, "query-pci")
        # A region counts on its memory blade's NUMA node; one from a memory
        # blade this blade has no node of gets a node number after its own.
        numa = {n.memory_blade: n.id for n in blade.nodes if n.memory_blade}
        others = [mb for mb in rack.memory_blades if mb.name not in numa]
        node_of = numa | {mb.name: len(blade.nodes) + i for i, mb in enumerate(others)}
        for reg in owned:
            ranges.append(memmap.region_range(memmap.region_id(reg["name"]), node_of[reg["memory_blade"]],
                                              reg["memory_blade"], ramblocks, pci))
        links = [mb for mb in others if any(r["memory_blade"] == mb.name for r in owned)]
    with plugin.Control(st.plugin_socket(blade.name)) as ctl:
        for mb in links:  # a memory blade the NUMA nodes do not use is new to the plugin
            ctl.request("set_link", blade=mb.name, latency_ns=mb.latency_ns, bandwidth_gbps=mb.bandwidth_gbps or 0)
        ctl.set_map(ranges)
    LOG.debug("%s: plugin map %s", blade.name, [r.as_json() for r in ranges])


def load_map(hv: Hypervisor, st: TestbedState, blade: str) -> None:
    """Refresh a running blade's plugin map after a region came or went, so an
    access to a region counts (and is delayed) as one to its memory blade. A
    testbed without the plugin (KVM) has nothing to refresh."""
    if st.plugin:
        rack = plan(st.spec_file).rack
        _load_map(hv, st, rack, next(b for b in rack.compute_blades if b.name == blade))


def domain_config(rack: Rack, blade: ComputeBlade, st: TestbedState, img: images.GuestImage,
                  bdir: Path, lib: Path | None = None) -> DomainConfig:
    extra: tuple[str, ...] = ()
    if lib is not None:
        extra = ("-plugin", plugin.plugin_arg(rack, blade, lib, st.plugin_socket(blade.name),
                                              st.plugin_stats(blade.name)))
    return DomainConfig(
        testbed=rack.name, blade=blade, accel=st.accel, kernel=img.kernel, initrd=img.initrd,
        cmdline=" ".join((img.cmdline, *rack.kernel_args)),
        disk=bdir / "root.qcow2", console_log=bdir / "console.log",
        ssh_port=st.blades[blade.name].ssh_port,
        fw_cfg=(("opt/ddc/hostname", bdir / "hostname"),
                ("opt/ddc/ssh_host_ed25519_key", bdir / "ssh_host_ed25519_key"),
                ("opt/ddc/authorized_keys", bdir / "authorized_keys")),
        extra_args=extra)


def endpoint(st: TestbedState, blade: str) -> Endpoint:
    rec = st.blades.get(blade)
    if rec is None:
        raise SpecError(f"testbed {st.name!r} has no compute blade {blade!r}",
                        hint=f"use one of: {', '.join(st.blades)}")
    return Endpoint(blade=blade, port=rec.ssh_port, key=st.client_key, known_hosts=st.known_hosts)


def _wait_all(rack: Rack, st: TestbedState, hv: Hypervisor, say: Say, timeout: float) -> dict[str, float]:
    """Wait for every blade's SSH in parallel; the first failure (or Ctrl-C) stops all waits."""
    stop = threading.Event()

    def one(blade: ComputeBlade) -> float:
        def alive() -> bool:
            return not stop.is_set() and hv.state(blade.domain) in ("running", "paused", "blocked")
        try:
            ready = wait_ready(endpoint(st, blade.name), timeout, alive)
        except DdcError as exc:
            if not stop.is_set():
                exc.message += "\n" + console_tail(st, blade.name)
            raise
        say(f"compute blade {blade.name}: booted ({ready.state}) after {ready.seconds:.1f} s")
        _say_degraded(blade.name, ready, say)
        return ready.seconds

    pool = ThreadPoolExecutor(max_workers=len(rack.compute_blades), thread_name_prefix="wait-ssh")
    try:
        futures = {b.name: pool.submit(one, b) for b in rack.compute_blades}
        return {name: f.result() for name, f in futures.items()}
    finally:
        stop.set()
        pool.shutdown(wait=False, cancel_futures=True)


def _say_degraded(blade: str, ready: Ready, say: Say) -> None:
    if ready.state == "degraded":
        say(f"compute blade {blade}: boot degraded, failed units: {', '.join(ready.failed) or 'none listed'} "
            f"(`ddc ssh FILE {blade} -- systemctl status UNIT` says why)")


def console_tail(st: TestbedState, blade: str, lines: int = 15) -> str:
    log = st.blade_dir(blade) / "console.log"
    try:
        tail = log.read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return f"(no console log at {log})"
    return f"last lines of {log}:\n" + "\n".join("  " + t for t in tail)


def _layout(blade: ComputeBlade) -> list[dict[str, Any]]:
    return [{"node": n.id, "size": n.size, "cpus": list(n.cpus), "latency_ns": n.latency_ns,
             "bandwidth_gbps": n.bandwidth_gbps, "memory_blade": n.memory_blade,
             "distance": blade.distances[0][n.id]} for n in blade.nodes]


# -- down -------------------------------------------------------------------------------------------

def down(name: str, *, say: Say = _quiet, uri: str | None = None) -> None:
    """Remove everything `up` created for testbed ``name``; safe to repeat."""
    with state.locked(name):
        st = state.load(name)
        if st is not None:
            st.phase = Phase.DESTROYING
            st.save()
            uri = st.uri
        _remove_domains(name, uri or "qemu:///system", say)
        if st is not None:
            for res in reversed(st.resources):
                _remove(res)
        _sweep(name)
        say(f"testbed {name} is down")
    (paths.state_root() / f"{name}.lock").unlink(missing_ok=True)
    (paths.state_root() / f"{name}.campaign.lock").unlink(missing_ok=True)


def _remove_domains(name: str, uri: str, say: Say) -> None:
    with Hypervisor(uri) as hv:
        ours = hv.domains_of(name)
        if not ours:
            return
        # In parallel: libvirt waits about a second for each QEMU to exit.
        with ThreadPoolExecutor(max_workers=len(ours)) as pool:
            for dom, _ in zip(ours, pool.map(hv.undefine, ours), strict=True):
                say(f"removed domain {dom}")


def _remove(res: dict[str, Any]) -> None:
    kind = res["kind"]
    path = Path(res.get("path", ""))
    if kind == "pool":
        pools.remove_pool(path)
    elif kind == "file":
        path.unlink(missing_ok=True)
        Path(f"{path}.pub").unlink(missing_ok=True)
    elif kind == "dir":
        shutil.rmtree(path, ignore_errors=True)
    # "domain": removed by _remove_domains, which also finds unjournaled ones.


def _sweep(name: str) -> None:
    """Whatever the journal missed: mounts and files under the testbed's pool root,
    and the state directory."""
    root = paths.pool_root() / name
    if root.exists():
        for sub in sorted(root.iterdir()):
            if sub.is_dir():
                pools.remove_pool(sub)
        shutil.rmtree(root, ignore_errors=True)
    with contextlib.suppress(OSError):
        root.parent.rmdir()  # the shared pool root, once no testbed uses it
    shutil.rmtree(state.testbed_dir(name), ignore_errors=True)
    shutil.rmtree(paths.run_root() / name, ignore_errors=True)
    with contextlib.suppress(OSError):
        paths.run_root().rmdir()  # the shared run directory, once no testbed uses it


def _stop_all(st: TestbedState) -> None:
    try:
        with Hypervisor(st.uri) as hv:
            for rec in st.blades.values():
                hv.destroy(rec.domain)
    except DdcError as exc:
        LOG.warning("could not stop the blades of %s: %s", st.name, exc)


# -- status -----------------------------------------------------------------------------------------

def status_of(st: TestbedState) -> list[BladeView]:
    try:
        with Hypervisor(st.uri) as hv:
            states = {name: hv.state(rec.domain) for name, rec in st.blades.items()}
    except HypervisorError:
        states = dict.fromkeys(st.blades, "unknown (libvirt unreachable)")
    return [_view(st, name, states.get(name, ABSENT)) for name in st.blades]


def _view(st: TestbedState, name: str, dom_state: str, boot_s: float | None = None) -> BladeView:
    rec = st.blades[name]
    return BladeView(name=name, domain=rec.domain, state=dom_state, endpoint=f"127.0.0.1:{rec.ssh_port}",
                     nodes=rec.nodes, boot_s=boot_s)


def status(name: str | None = None) -> list[dict[str, Any]]:
    """One dict per testbed (all of them when ``name`` is None), JSON-ready."""
    names = [name] if name else state.names()
    out = []
    for n in names:
        st = state.load(n)
        if st is None:
            if name:
                raise StateError(f"testbed {n!r} is not up", hint="`ddc up FILE` brings it up")
            continue
        out.append({"name": st.name, "phase": st.phase, "accel": st.accel, "uri": st.uri, "mode": st.mode,
                    "dilation": st.dilation, "cpi_ns": st.cpi_ns,
                    "spec_file": st.spec_file, "since": time.strftime("%Y-%m-%d %H:%M:%S",
                                                                      time.localtime(st.created_at)),
                    "error": st.error,
                    "blades": [v.__dict__ for v in status_of(st)]})
    return out


def load_up(name: str) -> TestbedState:
    st = state.load(name)
    if st is None or st.phase != Phase.UP:
        raise StateError(f"testbed {name!r} is not up", hint="`ddc up FILE` brings it up")
    return st


# -- dry run ----------------------------------------------------------------------------------------

def dry_run(spec_file: str | Path) -> str:
    """What `up` would create, with each blade's domain XML; touches nothing
    (no image build, no KVM probe, no port chosen)."""
    p = plan(spec_file)
    rack = p.rack
    img = images.cached_image(rack.image)
    lines = [f"# ddc up --dry-run {spec_file}: nothing below exists yet"]
    if img is None:
        digest = images.image_digest(rack.image)
        lines.append(f"would build image {rack.image} (digest {digest[:12]}) into {paths.image_cache()}")
        img = images.GuestImage(recipe=rack.image, digest=digest, directory=paths.image_cache() / "<new>",
                                rootfs=paths.image_cache() / "<new>/rootfs.qcow2",
                                kernel=paths.image_cache() / "<new>/vmlinuz", initrd=None,
                                cmdline="<from the image recipe>")
    else:
        lines.append(f"would use cached image {img.directory}")
    accel = rack.accel if rack.accel != "auto" else "auto (KVM trial boot at up; shown as tcg)"
    lines.append(f"accelerator: {accel}; libvirt: {rack.uri}")
    st = TestbedState(name=rack.name, spec_file=str(p.spec_file), spec_digest=p.digest, uri=rack.uri,
                      accel="kvm" if rack.accel == "kvm" else "tcg")
    lines.append(f"would create state directory {st.directory} (client key, known_hosts, per-blade files)")
    for mb in rack.memory_blades:
        lines.append(f"would mount pool {mb.pool_dir} (tmpfs, quota {format_size(mb.size)})")
        for piece in mb.slices:
            lines.append(f"  slice {piece.path}: {format_size(piece.size)} -> {piece.compute_blade} "
                         f"node {piece.node}")
    lib = None
    if rack.mode != "off" and rack.accel != "kvm":
        lib = paths.ddc_home() / "plugins" / "libddc-<hash>.so"
        lines.append(f"would build and install the latency plugin as {lib} (mode {rack.mode}; TCG only) "
                     f"and create {st.run_dir} for its sockets")
    for blade in rack.compute_blades:
        st.blades[blade.name] = BladeRecord(domain=blade.domain, ssh_port=0)
        bdir = st.blade_dir(blade.name)
        lines.append(f"would define and start domain {blade.domain} (overlay {bdir / 'root.qcow2'}, "
                     "SSH port chosen at up; shown as 0)")
        lines.append(domain_xml(domain_config(rack, blade, st, img, bdir, lib)))
    return "\n".join(lines)


# -- the plugin, at runtime -------------------------------------------------------------------------

def _plugin_blades(st: TestbedState, blade: str | None) -> list[str]:
    if not st.plugin:
        raise StateError(f"testbed {st.name!r} runs without the latency plugin (accel {st.accel})",
                         hint="the plugin needs TCG and `mode: inject` or `mode: account`")
    if blade is not None:
        endpoint(st, blade)  # validates the name
        return [blade]
    return list(st.blades)


def hierarchy_stats(name: str, blade: str | None = None) -> dict[str, tuple[dict[str, Any], Figures]]:
    """Live plugin statistics of one blade or all, with derived figures."""
    st = load_up(name)
    out = {}
    for b in _plugin_blades(st, blade):
        with plugin.Control(st.plugin_socket(b)) as ctl:
            raw = ctl.stats()
            config = ctl.request("config")
        out[b] = (raw, figures(raw, st.hit_ns, node_latencies(config)))
    return out


def node_latencies(config: dict[str, Any]) -> dict[int, float]:
    """NUMA node -> current latency, from the plugin's own config (runtime changes included)."""
    blade_ns = {b["name"]: b["latency_ns"] for b in config.get("blades", [])}
    lat = {0: float(config["local_ns"])}
    for r in config.get("ranges", []):
        if r.get("blade") is not None:
            lat[r["node"]] = float(blade_ns.get(r["blade"], config["local_ns"]))
    return lat


def set_link(name: str, memory_blade: str, latency_ns: int | None = None,
             bandwidth_gbps: float | None = None) -> list[str]:
    """Change a memory blade's latency and/or bandwidth in every blade that uses it, live."""
    if latency_ns is None and bandwidth_gbps is None:
        raise SpecError("give --latency, --bandwidth or both")
    st = load_up(name)
    fields: dict[str, Any] = {"blade": memory_blade}
    if latency_ns is not None:
        local = load_testbed(st.spec_file).local_latency_ns
        if latency_ns < local:
            raise SpecError(f"--latency {latency_ns} is below local_latency_ns ({local}) of {name!r}, and remote "
                            f"memory cannot be faster than local here: give at least {local}")
        fields["latency_ns"] = latency_ns
    if bandwidth_gbps is not None:
        fields["bandwidth_gbps"] = bandwidth_gbps
    users = st.memory_blade_nodes().get(memory_blade, {})
    changed = []
    for b in _plugin_blades(st, None):
        if b in users:
            with plugin.Control(st.plugin_socket(b)) as ctl:
                ctl.request("set_link", **fields)
            changed.append(b)
    if not changed:
        raise SpecError(f"no compute blade of {name!r} uses memory blade {memory_blade!r}")
    return changed


def set_dilation(name: str, dilation: float) -> None:
    """Paced mode's k, changed live on every blade of a paced testbed."""
    st = load_up(name)
    if st.mode != "paced":
        raise StateError(f"testbed {name!r} is not paced (mode {st.mode or 'off'})",
                         hint="dilation applies to `mode: paced` testbeds")
    if not 1 <= dilation <= MAX_DILATION:
        raise SpecError(f"--dilation {dilation:g}: want a number from 1 to {MAX_DILATION}")
    with state.locked(name):
        pacing.set_dilation({b: st.plugin_socket(b) for b in st.blades}, dilation)
        st.dilation = dilation
        st.save()


def prune_images() -> list[Path]:
    """Remove old guest images, keeping every recipe's current one and those in use."""
    in_use = set()
    for n in state.names():
        st = state.load(n)
        if st is not None and st.image_dir:
            in_use.add(Path(st.image_dir))
        elif st is not None:
            raise StateError(f"testbed {n!r} predates image tracking; cannot tell which image it uses",
                             hint=f"`ddc down {n}` first")
    return images.prune_images(in_use)
