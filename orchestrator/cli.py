"""The `ddc` command: arguments in, one call per verb, output out.

No logic lives here that a test would have to reach through argparse: each verb
parses into a typed request and calls one function of the package.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from . import execute, monitor, pacing, rack, testbed
from . import image as images
from .campaign import Run
from .errors import DdcError, SpecError
from .guest import Endpoint
from .spec import format_size

LOG = logging.getLogger("ddc")
OUT = Console(highlight=False, soft_wrap=True)
ERR = Console(stderr=True, highlight=False, soft_wrap=True)


@dataclass(frozen=True)
class Request:
    verb: str
    args: argparse.Namespace


def _say(message: str) -> None:
    ERR.print(f"[dim]•[/dim] {escape(message)}")


# -- verbs ------------------------------------------------------------------------------------------

def cmd_validate(a: argparse.Namespace) -> int:
    p = testbed.plan(a.file)
    rack = p.rack
    paced = (f" (dilation {rack.dilation if isinstance(rack.dilation, str) else f'{rack.dilation:g}'}, "
             f"cpi_ns {rack.cpi_ns:g})" if rack.mode == "paced" else "")
    OUT.print(f"[bold]{rack.name}[/bold]: valid ({a.file}); accel {rack.accel}, mode {rack.mode}{paced}, "
              f"image {rack.image}, libvirt {rack.uri}, total {format_size(p.spec.total_memory())}")
    mbs = Table("memory blade", "size", "used", "latency", "bandwidth", "slices", title="memory blades")
    for mb in rack.memory_blades:
        mbs.add_row(mb.name, format_size(mb.size), format_size(mb.used) if mb.used else "0",
                    f"{mb.latency_ns} ns", f"{mb.bandwidth_gbps:g} GB/s" if mb.bandwidth_gbps else "-",
                    ", ".join(f"{s.compute_blade}:node{s.node}" for s in mb.slices) or "-")
    if rack.memory_blades:
        OUT.print(mbs)
    for blade in rack.compute_blades:
        OUT.print(_nodes_table(blade.name, blade.vcpus, [
            {"node": n.id, "size": n.size, "cpus": list(n.cpus), "latency_ns": n.latency_ns,
             "bandwidth_gbps": n.bandwidth_gbps, "memory_blade": n.memory_blade,
             "distance": blade.distances[0][n.id]} for n in blade.nodes]))
        OUT.print("  SLIT: " + "  ".join(" ".join(f"{d:3d}" for d in row) for row in blade.distances))
    return 0


def _nodes_table(name: str, vcpus: int | None, nodes: list[dict[str, Any]]) -> Table:
    title = f"compute blade {name}" + (f" ({vcpus} vCPUs)" if vcpus else "")
    t = Table("node", "cpus", "size", "backed by", "latency", "bandwidth", "distance", title=title)
    for n in nodes:
        cpus = n["cpus"]
        t.add_row(str(n["node"]), f"{cpus[0]}-{cpus[-1]}" if cpus else "none", format_size(n["size"]),
                  n["memory_blade"] or "local DRAM", f"{n['latency_ns']} ns",
                  f"{n['bandwidth_gbps']:g} GB/s" if n["bandwidth_gbps"] else "-", str(n["distance"]))
    return t


def cmd_image_build(a: argparse.Namespace) -> int:
    img = images.build_image(a.recipe, force=a.force, progress=_say)
    OUT.print(f"image {img.recipe} {img.digest[:12]}: {img.directory}")
    return 0


def cmd_image_list(a: argparse.Namespace) -> int:
    t = Table("recipe", "digest", "cached at")
    for name in images.recipe_names():
        img = images.cached_image(name)
        t.add_row(name, images.image_digest(name)[:12], str(img.directory) if img else "not built")
    OUT.print(t)
    return 0


def cmd_image_prune(a: argparse.Namespace) -> int:
    removed = testbed.prune_images()
    for path in removed:
        OUT.print(f"removed {path}")
    OUT.print(f"{len(removed)} old image(s) removed")
    return 0


def cmd_up(a: argparse.Namespace) -> int:
    if a.dry_run:
        print(testbed.dry_run(a.file))
        return 0
    views = testbed.up(a.file, say=_say)
    _print_blades(views)
    return 0


def _print_blades(views: list[testbed.BladeView]) -> None:
    t = Table("blade", "domain", "state", "ssh", "boot", "NUMA nodes")
    t.columns[3].no_wrap = True
    for v in views:
        layout = "\n".join(
            f"node{n['node']}: {format_size(n['size'])}, "
            + (f"cpus {n['cpus'][0]}-{n['cpus'][-1]}" if n["cpus"] else f"{n['memory_blade']}")
            + f", {n['latency_ns']} ns, d={n['distance']}" for n in v.nodes)
        t.add_row(v.name, v.domain, v.state, f"root@{v.endpoint}",
                  f"{v.boot_s:.1f} s" if v.boot_s is not None else "-", layout)
    OUT.print(t)


def cmd_down(a: argparse.Namespace) -> int:
    testbed.down(testbed.testbed_name(a.file), say=_say)
    return 0


def cmd_status(a: argparse.Namespace) -> int:
    beds = testbed.status(testbed.testbed_name(a.file) if a.file else None)
    if a.json:
        print(json.dumps(beds, indent=2))
        return 0
    if not beds:
        OUT.print("no testbed is up")
    for bed in beds:
        OUT.print(f"[bold]{bed['name']}[/bold]: {bed['phase']} since {bed['since']} ({bed['accel']}, "
                  f"{bed['uri']}) from {bed['spec_file']}")
        if bed.get("dilation"):
            OUT.print(f"  paced: dilation {bed['dilation']:g}, cpi_ns {bed['cpi_ns']:g} (the guests run "
                      f"{bed['dilation']:g}x slower than the model; their times / k are model time)")
        if bed["error"]:
            OUT.print(f"  error: {bed['error']}", markup=False)
        _print_blades([testbed.BladeView(**b) for b in bed["blades"]])
    return 0


def cmd_ssh(a: argparse.Namespace) -> int:
    st = testbed.load_up(testbed.testbed_name(a.file))
    ep: Endpoint = testbed.endpoint(st, a.blade)
    command = list(a.command)
    if command and command[0] == "--":
        command = command[1:]
    argv = ep.ssh_argv(*command, tty=not command and sys.stdin.isatty())
    LOG.debug("+ %s", " ".join(argv))
    if not command:
        os.execvp(argv[0], argv)  # interactive: hand the terminal to ssh
    return subprocess.run(argv).returncode


def cmd_stats(a: argparse.Namespace) -> int:
    result = testbed.hierarchy_stats(testbed.testbed_name(a.file), a.blade)
    if a.json:
        print(json.dumps({b: {"stats": raw, "figures": asdict(fig)} for b, (raw, fig) in result.items()}, indent=2))
        return 0
    for blade, (raw, fig) in result.items():
        OUT.print(f"[bold]{blade}[/bold]: {fig.insns:,} instructions, {fig.loads:,} loads, {fig.stores:,} stores; "
                  f"mode {raw['mode']}, modelled stall {fig.modelled_stall_ns / 1e6:,.1f} ms, "
                  f"injected {fig.injected_ns / 1e6:,.1f} ms")
        levels = Table("level", "accesses", "hits", "misses", "miss ratio", "hit", "AMAT", title="hierarchy")
        for lv in fig.levels:
            levels.add_row(lv.name, f"{lv.accesses:,}", f"{lv.hits:,}", f"{lv.misses:,}", f"{lv.miss_ratio:.4f}",
                           f"{lv.hit_ns:g} ns", f"{lv.amat_ns:.2f} ns")
        levels.add_row("memory", f"{sum(n['memory'] for n in fig.nodes):,}", "", "", "", "",
                       f"{fig.memory_amat_ns:.1f} ns")
        OUT.print(levels)
        nodes = Table("node", "accesses", "reached memory", "share of memory", title="by NUMA node")
        memory = sum(n["memory"] for n in fig.nodes) or 1
        for n in fig.nodes:
            nodes.add_row(str(n["node"]), f"{n['accesses']:,}", f"{n['memory']:,}", f"{n['memory'] / memory:.1%}")
        OUT.print(nodes)
        links = Table("memory blade", "latency", "bandwidth", "accesses", "bytes", "stall", "queueing", title="links")
        for b in fig.blades:
            links.add_row(b["name"], f"{b['latency_ns']} ns",
                          f"{b['bandwidth_gbps']:g} GB/s" if b["bandwidth_gbps"] else "unlimited",
                          f"{b['accesses']:,}", f"{b['bytes']:,}", f"{b['stall_ns'] / 1e6:,.1f} ms",
                          f"{b['queue_ns'] / 1e6:,.1f} ms")
        OUT.print(links)
        clocks = pacing.clocks(raw)
        if clocks.mode == "paced":
            _print_clocks(clocks)
    return 0


def _print_clocks(c: pacing.Clocks) -> None:
    t = Table("vCPU", "model time", "lag", "idle (model)", "wall", "of it idle", "of it waiting",
              title=f"paced: dilation {c.dilation:g}, cpi_ns {c.cpi_ns:g}, window {c.window_us / 1000:g} ms wall")
    for v in c.vcpus:
        t.add_row(str(v.vcpu), f"{v.model_ns / 1e6:,.3f} ms", f"{v.lag_ns / 1e6:,.3f} ms ({v.lag_fraction:.2%})",
                  f"{v.idle_model_ns / 1e6:,.3f} ms", f"{v.wall_ns / 1e6:,.1f} ms", f"{v.idle_ns / 1e6:,.1f} ms",
                  f"{v.wait_ns / 1e6:,.1f} ms")
    OUT.print(t)


def cmd_pace(a: argparse.Namespace) -> int:
    name = testbed.testbed_name(a.file)
    if a.dilation is not None:
        testbed.set_dilation(name, a.dilation)
    st = testbed.load_up(name)
    OUT.print(f"{name}: dilation {st.dilation:g}, cpi_ns {st.cpi_ns:g}")
    return 0


def cmd_link(a: argparse.Namespace) -> int:
    changed = testbed.set_link(testbed.testbed_name(a.file), a.memory_blade, a.latency, a.bandwidth)
    OUT.print(f"{a.memory_blade}: updated live in {', '.join(changed)}")
    return 0


class CampaignProgress:
    """Runs done, failed and left, and the ETA, as a rich progress bar on stderr; where stderr is not a
    terminal (a log file, CI), one line per finished run instead, which a live bar cannot give there."""

    def __init__(self) -> None:
        self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("[green]{task.fields[ok]} ok[/green] [red]{task.fields[bad]} failed[/red] "
                                       "{task.fields[left]} left"),
                            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=ERR,
                            transient=False)
        self.task: TaskID | None = None
        self.ok = self.bad = self.left = 0
        self.lines = not ERR.is_terminal
        self.t0 = time.monotonic()
        self.finished_here = 0

    def __enter__(self) -> CampaignProgress:
        self.bar.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.bar.stop()

    def begin(self, total: int, done: int, failed: int) -> None:
        self.ok, self.bad, self.left = done - failed, failed, total - done
        self.task = self.bar.add_task("runs", total=total, completed=done, ok=self.ok, bad=self.bad, left=self.left)

    def started(self, run: Run, warmup: bool) -> None:
        if self.task is not None:
            self.bar.update(self.task, description=("warm-up " if warmup else "") + run.workload)

    def finished(self, run: Run, status: str, warmup: bool) -> None:
        if warmup or self.task is None:
            return
        if status == "ok":
            self.ok += 1
        else:
            self.bad += 1
            if not self.lines:
                self.bar.console.print(f"[red]run {run.run_id}: {status}[/red]")
        self.left -= 1
        self.bar.update(self.task, advance=1, ok=self.ok, bad=self.bad, left=self.left)
        self.finished_here += 1
        if self.lines:
            elapsed = time.monotonic() - self.t0
            eta = elapsed / self.finished_here * self.left
            self.bar.console.print(f"run {run.run_id}: {status}; {self.ok} ok, {self.bad} failed, {self.left} left, "
                                   f"{elapsed / 60:.1f} min elapsed, about {eta / 60:.0f} min to go")

    def say(self, message: str) -> None:
        self.bar.console.print(f"[dim]•[/dim] {escape(message)}")


def cmd_run(a: argparse.Namespace) -> int:
    if a.dry_run:
        for line in execute.dry_run(a.campaign, a.out):
            OUT.print(escape(line))
        return 0
    with CampaignProgress() as progress:
        outcome = execute.run_campaign(a.campaign, a.out, observer=progress)
    counts = ", ".join(f"{n} {s}" for s, n in sorted(outcome.statuses.items())) or "nothing new"
    OUT.print(f"{outcome.executed} runs executed ({counts}), {outcome.skipped} already done; "
              f"results in {outcome.out}")
    if outcome.executed:
        OUT.print(f"orchestration overhead: {outcome.overhead(with_steps=True):.2f} s per run "
                  f"({outcome.overhead():.2f} s counting the workloads' setup and teardown as overhead; "
                  f"{outcome.wall_s:.1f} s wall, {outcome.workload_s:.1f} s in the commands, "
                  f"{outcome.steps_s:.1f} s in setup and teardown)")
    return 0 if outcome.statuses.get("ok", 0) == outcome.executed else 3


def cmd_results(a: argparse.Namespace) -> int:
    if not (a.csv or a.parquet):
        raise SpecError("give --csv PATH, --parquet PATH or both")
    from . import results  # pyarrow: loaded only for this verb

    rows = results.export(a.directory, csv=a.csv, parquet=a.parquet)
    OUT.print(f"{rows} runs written to " + " and ".join(p for p in (a.csv, a.parquet) if p))
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    from . import report  # matplotlib: loaded only for this verb

    written = report.write_report(a.directory, a.run)
    for path in written:
        OUT.print(str(path))
    return 0


def _phases(timings: dict[str, float]) -> str:
    return ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in timings.items())


def cmd_region_attach(a: argparse.Namespace) -> int:
    reg, timings = rack.attach(testbed.testbed_name(a.file), a.blade, memory_blade=a.memory_blade, size=a.size,
                               region=a.name, kind=a.kind, say=_say)
    OUT.print(f"region {reg.name}: attached to {reg.owner} ({_phases(timings)})")
    return 0


def cmd_region_detach(a: argparse.Namespace) -> int:
    reg, timings = rack.detach(testbed.testbed_name(a.file), a.region, say=_say)
    OUT.print(f"region {reg.name}: detached ({_phases(timings)}); its bytes stay in {reg.memory_blade}")
    return 0


def cmd_region_list(a: argparse.Namespace) -> int:
    regs, events = rack.list_regions(testbed.testbed_name(a.file))
    if a.json:
        print(json.dumps({"regions": [r.__dict__ for r in regs], "events": events}, indent=2))
        return 0
    table = Table("region", "as", "memory blade", "size", "owner", "state", "port", "file", title="regions")
    for r in regs:
        table.add_row(r.name, r.kind, r.memory_blade, format_size(r.size), r.owner or "-", r.state, r.port or "-",
                      r.path)
    OUT.print(table)
    return 0


def cmd_grant(a: argparse.Namespace) -> int:
    reg, timings = rack.grant(testbed.testbed_name(a.file), a.region, a.to, say=_say)
    OUT.print(f"region {reg.name}: granted to {reg.owner} ({_phases(timings)})")
    return 0


def cmd_steal(a: argparse.Namespace) -> int:
    reg, timings = rack.steal(testbed.testbed_name(a.file), a.region, a.to, say=_say)
    OUT.print(f"region {reg.name}: stolen for {reg.owner} ({_phases(timings)})")
    return 0


def cmd_contacts(a: argparse.Namespace) -> int:
    monitor.set_contacts(testbed.testbed_name(a.file), a.blade, a.notify)
    OUT.print(f"{a.blade}: {', '.join(a.notify) or 'nobody'} will be told when it fails (while `ddc monitor` runs)")
    return 0


def cmd_monitor(a: argparse.Namespace) -> int:
    try:
        monitor.Monitor(testbed.testbed_name(a.file), a.interval, say=_say).run()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the way to stop it
        _say("monitor stopped")
    return 0


def cmd_restart(a: argparse.Namespace) -> int:
    testbed.restart_blade(testbed.testbed_name(a.file), a.blade, say=_say)
    return 0


def cmd_fail(a: argparse.Namespace) -> int:
    name = testbed.testbed_name(a.file)
    st = testbed.load_up(name)
    if a.region is not None:
        reg, _pids, timings = rack.fail_region(name, a.blade, a.region, say=_say)
        OUT.print(f"region {reg.name}: failed ({_phases(timings) or 'it was detached'})")
    elif a.blade in st.blades:
        rack.crash(name, a.blade, say=_say)
    else:
        rack.fail_memory_blade(name, a.blade, say=_say)
    return 0


# -- parsing ----------------------------------------------------------------------------------------

VERBS: dict[str, Callable[[argparse.Namespace], int]] = {
    "validate": cmd_validate,
    "image build": cmd_image_build,
    "image list": cmd_image_list,
    "image prune": cmd_image_prune,
    "up": cmd_up,
    "down": cmd_down,
    "status": cmd_status,
    "ssh": cmd_ssh,
    "stats": cmd_stats,
    "link": cmd_link,
    "pace": cmd_pace,
    "run": cmd_run,
    "results": cmd_results,
    "report": cmd_report,
    "region attach": cmd_region_attach,
    "region detach": cmd_region_detach,
    "region list": cmd_region_list,
    "grant": cmd_grant,
    "steal": cmd_steal,
    "fail": cmd_fail,
    "restart": cmd_restart,
    "contacts": cmd_contacts,
    "monitor": cmd_monitor,
}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ddc", description="Disaggregated-datacenter testbed on one host.")
    ap.add_argument("--debug", action="store_true", help="log every command and show tracebacks")
    sub = ap.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = sub.add_parser("validate", help="check a testbed file and print the resolved topology")
    p.add_argument("file")

    p = sub.add_parser("image", help="guest images")
    isub = p.add_subparsers(dest="image_verb", required=True, metavar="ACTION")
    b = isub.add_parser("build", help="build (or reuse from cache) a guest image")
    b.add_argument("recipe", nargs="?", default="debian-bookworm")
    b.add_argument("--force", action="store_true", help="rebuild even if cached")
    isub.add_parser("list", help="recipes and their cached images")
    isub.add_parser("prune", help="remove cached images that are neither current nor in use")

    p = sub.add_parser("up", help="bring a testbed up and wait for SSH on every blade")
    p.add_argument("file")
    p.add_argument("--dry-run", action="store_true", help="print the domain XML and the plan; touch nothing")

    p = sub.add_parser("down", help="remove everything `up` created (also after a failed up)")
    p.add_argument("file", help="testbed file, or the testbed's name")

    p = sub.add_parser("status", help="state of one testbed, or of all")
    p.add_argument("file", nargs="?")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("ssh", help="a shell on a blade, or run one command and return its exit code")
    p.add_argument("file")
    p.add_argument("blade")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ...")

    p = sub.add_parser("stats", help="live memory-hierarchy statistics from the latency plugin")
    p.add_argument("file")
    p.add_argument("blade", nargs="?")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("link", help="change a memory blade's latency or bandwidth live (no reboot)")
    p.add_argument("file")
    p.add_argument("memory_blade")
    p.add_argument("--latency", type=int, metavar="NS", help="latency_ns of the memory blade")
    p.add_argument("--bandwidth", type=float, metavar="GBPS", help="bandwidth_gbps (0: unlimited)")

    p = sub.add_parser("pace", help="paced mode: show the dilation, or change it live on every blade")
    p.add_argument("file")
    p.add_argument("--dilation", type=float, metavar="K", help="the new k (at least 1)")

    p = sub.add_parser("run", help="run a campaign (resumes where an interrupted one stopped)")
    p.add_argument("campaign")
    p.add_argument("--out", metavar="DIR", help="results directory (default: results/<campaign name>)")
    p.add_argument("--dry-run", action="store_true", help="list the runs; touch nothing")

    p = sub.add_parser("results", help="export a campaign's runs as one tidy table")
    p.add_argument("directory")
    p.add_argument("--csv", metavar="PATH")
    p.add_argument("--parquet", metavar="PATH")

    p = sub.add_parser("region", help="Rack MMU: memory regions that move between compute blades")
    rsub = p.add_subparsers(dest="region_verb", required=True, metavar="ACTION")
    r = rsub.add_parser("attach", help="hot-plug a new (or a detached) region into a compute blade")
    r.add_argument("file")
    r.add_argument("blade", help="the compute blade")
    r.add_argument("--blade", dest="memory_blade", metavar="MEMORY_BLADE", help="the memory blade it comes from")
    r.add_argument("--size", help="a power of two, e.g. 256M")
    r.add_argument("--name", help="the region's name (default r0, r1, ...; an existing detached one is re-attached)")
    r.add_argument("--as", dest="kind", choices=rack.KINDS, default="shm",
                   help="shm: the raw shared memory (a PCI BAR; default); fs: an ext4 file system on it, "
                        "mounted at /run/ddc/regions/NAME")
    r = rsub.add_parser("detach", help="release and hot-unplug a region; its bytes stay in the memory blade")
    r.add_argument("file")
    r.add_argument("region")
    r = rsub.add_parser("list", help="regions: owner, size, state; --json adds the log of ownership changes")
    r.add_argument("file")
    r.add_argument("--json", action="store_true")

    p = sub.add_parser("grant", help="move a region to another compute blade (the owner releases it; zero-copy)")
    p.add_argument("file")
    p.add_argument("region")
    p.add_argument("--to", required=True, metavar="BLADE")

    p = sub.add_parser("steal", help="move a region without asking its owner (the owner is fenced first)")
    p.add_argument("file")
    p.add_argument("region")
    p.add_argument("--to", required=True, metavar="BLADE")

    p = sub.add_parser("fail", help="crash a compute blade (QEMU stopped), or fail a memory blade (machine checks "
                                    "on every page of it in use: those processes get SIGBUS) or one of its regions")
    p.add_argument("file")
    p.add_argument("blade")
    p.add_argument("--region", metavar="REGION", help="fail only this region of the memory blade: its owner loses "
                                                      "it, the programs mapping it get SIGBUS (fs: EIO)")

    p = sub.add_parser("contacts", help="the compute blades told at once when a blade fails (by `ddc monitor`)")
    p.add_argument("file")
    p.add_argument("blade", help="a compute or memory blade")
    p.add_argument("--notify", nargs="*", default=[], metavar="BLADE", help="compute blades to tell (none: clear)")

    p = sub.add_parser("monitor", help="watch the blades and notify emergency contacts of failures (until Ctrl-C)")
    p.add_argument("file")
    p.add_argument("--interval", type=float, default=0.1, metavar="S", help="heartbeat period (default 0.1 s)")

    p = sub.add_parser("restart", help="boot a compute blade again after a crash (disk and pool slices kept)")
    p.add_argument("file")
    p.add_argument("blade")

    p = sub.add_parser("report", help="write a Markdown and HTML report with plots")
    p.add_argument("directory")
    p.add_argument("--run", metavar="RUN_ID", help="the run whose counters are plotted over time")
    return ap


def parse(argv: Sequence[str]) -> Request:
    args = parser().parse_args(argv)
    sub = {"image": "image_verb", "region": "region_verb"}.get(args.verb)
    verb = args.verb + (f" {getattr(args, sub)}" if sub else "")
    return Request(verb, args)


def _terminated(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    req = parse(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.DEBUG if req.args.debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    # SIGTERM unwinds like Ctrl-C, so `up` stops the blades it started and
    # leaves its journal for `down`. SIGINT is handled even where it arrives
    # ignored: a shell without job control starts background commands so, and
    # Python then never turns it into KeyboardInterrupt (a `kill -INT` of a
    # `ddc up &` from a script, or from a test, was lost and `up` went on).
    signal.signal(signal.SIGTERM, _terminated)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return VERBS[req.verb](req.args)
    except KeyboardInterrupt:
        ERR.print("ddc: interrupted; `ddc down FILE` removes whatever was created"
                  + ("; `ddc run` again resumes the campaign" if req.verb == "run" else ""))
        return 130
    except DdcError as exc:
        if req.args.debug:
            raise
        ERR.print(f"[bold red]ddc: error:[/bold red] {escape(exc.message)}")
        if exc.hint:
            ERR.print(f"[yellow]hint:[/yellow] {escape(exc.hint)}")
        return 2 if isinstance(exc, SpecError) else 1


if __name__ == "__main__":
    sys.exit(main())
