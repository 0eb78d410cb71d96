"""What libddc costs a guest, next to plain TCG, the floor plugin and QEMU's
contrib cache plugin: one table of medians, printed, never asserted.

    .venv/bin/python bench/plugin_overhead.py [--reps 5] [--scale 1.0]
    .venv/bin/python bench/plugin_overhead.py --system [--kernel VMLINUX]

Workloads: the project's pointer-chase probe (workloads/src/ddc-ptrchase.c,
64 MiB, built static here), `sysbench memory` (Debian's, sequential writes
of a 64 MiB block) and a store loop, the three the issue names, plus two
loops that stress the cache model (bench/progs/overhead_loops.c): a chase
that misses the L1 and hits the L2 on every load, and a strided stream.

User mode (qemu-x86_64) runs each workload as its own process.  Each
repetition runs every (workload, variant) pair once, in an order rotated from
one repetition to the next, so a burst of load from the other users of the
host spreads over all variants instead of landing on one; the table shows
medians, and the ratio of the fastest runs (noise only adds time).

--system boots qemu-system-x86_64 (TCG, -smp 2, as a compute blade) on a
kernel (default: the first /var/lib/ddc/images/*/vmlinux) with a throwaway
initramfs (the probe, sysbench and its libraries) whose /init is
overhead_loops: it runs the workloads one after the other, times each with
the guest's clock (boot excluded), prints the times on the serial console and
powers off.  One boot per (repetition, variant).

Variants:
  plain   no plugin
  floor   bench/floor_plugin.c: one callback per access, one range check
  ddc     libddc: three levels (32K/1M/16M), latency 0, mode=account;
          with --system also a map with node 0's range over the guest's
          RAM, as every blade has
  ddc-ni  the same with insns=off (no per-TB callback)
  ddc-off the same loaded with active=off, never activated: should match
          plain (no instrumentation while inactive)
  ddc-paced  libddc in paced mode, free-running (dilation=0): the model
          clock's pricing at every block, without any wait
  base, base-off  with --baseline LIBDDC: an older build, as ddc and ddc-off
  cache   contrib/plugins/cache.c of the installed QEMU's source (L1d, L1i
          and L2, LRU), compiled at bench time from qemu_devices/build/src
          into a temporary directory (never committed)

Everything built goes to a temporary directory that is removed at the end.
"""

from __future__ import annotations

import argparse
import glob
import logging
import shlex
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

LOG = logging.getLogger("plugin_overhead")

REPO = Path(__file__).resolve().parents[1]
DEVICES = REPO / "qemu_devices"
QEMU_USER = "qemu-x86_64"
QEMU_SYSTEM = "qemu-system-x86_64"
KERNEL_GLOB = "/var/lib/ddc/images/*/vmlinux"
LOOPS_SRC = REPO / "bench" / "progs" / "overhead_loops.c"
PROBE_SRC = REPO / "workloads" / "src" / "ddc-ptrchase.c"
SYSBENCH = Path("/usr/bin/sysbench")


@dataclass(frozen=True)
class Workload:
    """A loop of overhead_loops (``program`` empty), or another program whose
    argv names it by its key in ``Programs`` and has ``{size}`` where the
    size goes."""

    name: str
    size: int
    program: tuple[str, ...] = ()

    def scaled(self, scale: float) -> Workload:
        return Workload(self.name, max(1, int(self.size * scale)), self.program)

    def _argv(self, where: dict[str, str]) -> list[str]:
        return [where[self.program[0]], *(a.format(size=self.size) for a in self.program[1:])]

    def host_argv(self, programs: Programs) -> list[str]:
        if not self.program:
            return [str(programs.loops), self.name, str(self.size)]
        return self._argv(programs.host)

    def spec(self, programs: Programs) -> str:
        """The guest /init's argument for this workload."""
        if not self.program:
            return f"{self.name}={self.size}"
        return f"{self.name}=" + ",".join(self._argv(programs.guest))


@dataclass(frozen=True)
class Programs:
    """Where the workloads' programs are: on the host, and in the initramfs."""

    loops: Path
    host: dict[str, str]
    guest: dict[str, str]


# At --scale 1, each takes 0.2-0.6 s of plain TCG here in user mode, more in
# system mode (contrib cache.c takes 15-80 times that).
WORKLOADS = [
    Workload("probe", 1_000_000, ("ddc-ptrchase", "-s", "64M", "-n", "{size}", "-r", "1")),
    Workload("sysbench", 2048, ("sysbench", "memory", "--threads=1", "--memory-block-size=64M",
                                "--memory-total-size={size}M", "--memory-oper=write",
                                "--memory-access-mode=seq", "run")),
    Workload("store", 60_000_000),
    Workload("chase", 30_000_000),
    Workload("stream", 60_000_000),
]

DDC_OPTS = ["mode=account", "local_ns=0", "cache=l1d:32K:8:64:private;l2:1M:16:64:private;llc:16M:16:64:shared"]
# Paced mode free-running (k = 0): the model clock is priced at every block
# but nothing waits, so what it adds is the cost of pacing's bookkeeping.
PACED_OPTS = ("mode=paced", "dilation=0", "cpi_ns=0.4")
GUEST_MIB = 512
# In a blade, libddc always has a map with node 0's range (orchestrator/
# memmap.py), and its physical-address memo knows that range's whole host
# span.  The booted guest's RAM is one block below 4 GiB, so its range in the
# plugin API's terms is [0, GUEST_MIB MiB); the floor gets no such help.
DDC_SYSTEM_OPTS = (f"range=0:{GUEST_MIB << 20:x}:0",)
CACHE_OPTS = ["dcachesize=32768", "dassoc=8", "dblksize=64", "icachesize=32768", "iassoc=8", "iblksize=64",
              "l2=on", "l2cachesize=1048576", "l2assoc=16", "l2blksize=64", "evict=lru"]


class BenchError(Exception):
    """A build or a run failed; the message carries the command and its output."""


@dataclass(frozen=True)
class Variant:
    name: str
    plugin: Path | None
    opts: tuple[str, ...] = ()
    system_opts: tuple[str, ...] = ()   # added under --system only

    def plugin_args(self, system: bool = False) -> list[str]:
        if self.plugin is None:
            return []
        opts = (*self.opts, *self.system_opts) if system else self.opts
        # QEMU splits -plugin at commas; write a literal one as ",,".
        return ["-plugin", ",".join([str(self.plugin), *(o.replace(",", ",,") for o in opts)])]

    def argv(self, workload: Workload, programs: Programs) -> list[str]:
        return [QEMU_USER, *self.plugin_args(), *workload.host_argv(programs)]

    def system_argv(self, kernel: Path, initrd: Path, specs: Sequence[str]) -> list[str]:
        append = "console=ttyS0 quiet panic=-1 -- all " + " ".join(specs)
        return [QEMU_SYSTEM, "-accel", "tcg", "-smp", "2", "-m", str(GUEST_MIB), "-nodefaults", "-display", "none",
                "-no-reboot", "-serial", "stdio", "-monitor", "none", "-kernel", str(kernel),
                "-initrd", str(initrd), "-append", append, *self.plugin_args(system=True)]


def run(argv: Sequence[str], **kw: object) -> subprocess.CompletedProcess[str]:
    LOG.debug("+ %s", shlex.join(argv))
    try:
        # run() kills the child on any exception (timeout, Ctrl-C) before raising
        proc = subprocess.run(list(argv), capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{shlex.join(argv)} timed out after {exc.timeout} s") from exc
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-20:])
        raise BenchError(f"{shlex.join(argv)} exited {proc.returncode}:\n{tail}")
    return proc


def build_contrib_cache(out: Path) -> Path:
    """contrib/plugins/cache.c from the cached source of the installed QEMU."""
    tarballs = sorted((DEVICES / "build" / "src").glob("qemu_*.orig.tar.*"))
    if not tarballs:
        raise BenchError("no QEMU source in qemu_devices/build/src; run make -C qemu_devices first")
    with tarfile.open(tarballs[-1]) as tar:
        member = next((m for m in tar.getmembers() if m.name.endswith("/contrib/plugins/cache.c")), None)
        if member is None:
            raise BenchError(f"{tarballs[-1]} has no contrib/plugins/cache.c")
        src = tar.extractfile(member)
        assert src is not None
        (out / "cache.c").write_bytes(src.read())
    glib = run(["pkg-config", "--cflags", "--libs", "glib-2.0"]).stdout.split()
    so = out / "libcache.so"
    run(["cc", "-O2", "-fPIC", "-shared", "-I", str(DEVICES / "build" / "include"), "-o", str(so),
         str(out / "cache.c"), *glib])
    return so


def cpio_newc(files: dict[str, bytes]) -> bytes:
    """An uncompressed initramfs (newc cpio) of regular executable files, and
    the directories they are in."""
    out = bytearray()
    dirs = sorted({str(parent) for name in files for parent in Path(name).parents if str(parent) != "."})

    def entry(name: str, mode: int, data: bytes, ino: int) -> None:
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0]
        out.extend(b"070701" + b"".join(f"{f:08x}".encode() for f in fields) + name.encode() + b"\0")
        out.extend(b"\0" * (-len(out) % 4))
        out.extend(data)
        out.extend(b"\0" * (-len(out) % 4))

    for ino, name in enumerate(dirs, start=1):
        entry(name, 0o040755, b"", ino)
    for ino, (name, data) in enumerate(files.items(), start=len(dirs) + 1):
        entry(name, 0o100755, data, ino)
    entry("TRAILER!!!", 0, b"", 0)
    return bytes(out)


def shared_libraries(program: Path) -> dict[str, Path]:
    """What the dynamic loader maps for ``program``: initramfs path -> host file
    (the libraries go to /lib, where /init points LD_LIBRARY_PATH)."""
    libs: dict[str, Path] = {}
    for line in run(["ldd", str(program)]).stdout.splitlines():
        words = line.split()
        if "=>" in words and words[words.index("=>") + 1].startswith("/"):
            host = Path(words[words.index("=>") + 1])
            libs[f"lib/{host.name}"] = host.resolve()
        elif words and words[0].startswith("/"):   # the loader itself, at its fixed path
            libs[words[0].lstrip("/")] = Path(words[0]).resolve()
    return libs


def system_times(argv: Sequence[str], names: Sequence[str]) -> dict[str, float]:
    """Boot once; the guest's own times per workload, from its console."""
    proc = run(argv, timeout=1800)
    times = {}
    for line in proc.stdout.splitlines():
        words = line.split()
        if line.startswith("overhead_loops: ") and words[2] != "failed":
            times[words[1]] = float(words[2])
    if sorted(times) != sorted(names):
        raise BenchError(f"{shlex.join(argv)}: the guest timed {sorted(times)}, not {sorted(names)}:\n"
                         f"{proc.stdout[-3000:]}")
    return times


def timed(argv: Sequence[str]) -> float:
    t0 = time.perf_counter()
    run(argv)
    return time.perf_counter() - t0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=5, help="interleaved repetitions (default 5)")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every workload's length")
    ap.add_argument("--workloads", default=",".join(w.name for w in WORKLOADS), help="comma-separated subset")
    ap.add_argument("--skip-cache", action="store_true", help="leave contrib cache.c out (it is slow)")
    ap.add_argument("--system", action="store_true", help="qemu-system-x86_64 with a kernel and an initramfs")
    ap.add_argument("--kernel", type=Path, help=f"the kernel for --system (default: first of {KERNEL_GLOB})")
    ap.add_argument("--baseline", type=Path, metavar="LIBDDC",
                    help="also an older libddc.so (e.g. built from a git worktree of an earlier commit): "
                         "variants base and base-off, with ddc's options")
    ap.add_argument("--debug", action="store_true", help="log every command")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, format="%(message)s")
    known = {w.name: w for w in WORKLOADS}
    unknown = sorted(set(args.workloads.split(",")) - set(known))
    if unknown:
        ap.error(f"--workloads: unknown {', '.join(unknown)} (known: {', '.join(known)})")
    workloads = [known[name].scaled(args.scale) for name in args.workloads.split(",")]

    try:
        if any(w.program[:1] == ("sysbench",) for w in workloads) and not SYSBENCH.is_file():
            raise BenchError(f"{SYSBENCH} not found: apt-get install sysbench, or leave it out with --workloads")
        run(["make", "-s", "-C", str(DEVICES)])
        with tempfile.TemporaryDirectory(prefix="ddc-overhead-") as tmp:
            out = Path(tmp)
            loops, probe = out / "overhead_loops", out / "ddc-ptrchase"
            run(["gcc", "-O2", "-static", "-o", str(loops), str(LOOPS_SRC)])
            run(["gcc", "-O2", "-static", "-o", str(probe), str(PROBE_SRC)])
            programs = Programs(loops, host={"ddc-ptrchase": str(probe), "sysbench": str(SYSBENCH)},
                                guest={"ddc-ptrchase": "/ddc-ptrchase", "sysbench": "/sysbench"})
            variants = [
                Variant("plain", None),
                Variant("floor", DEVICES / "build" / "libfloor.so"),
                Variant("ddc", DEVICES / "build" / "libddc.so", tuple(DDC_OPTS), DDC_SYSTEM_OPTS),
                Variant("ddc-ni", DEVICES / "build" / "libddc.so", (*DDC_OPTS, "insns=off"), DDC_SYSTEM_OPTS),
                Variant("ddc-off", DEVICES / "build" / "libddc.so", (*DDC_OPTS, "active=off"), DDC_SYSTEM_OPTS),
                Variant("ddc-paced", DEVICES / "build" / "libddc.so", (*DDC_OPTS[1:], *PACED_OPTS), DDC_SYSTEM_OPTS),
            ]
            if args.baseline:
                variants += [Variant("base", args.baseline, tuple(DDC_OPTS), DDC_SYSTEM_OPTS),
                             Variant("base-off", args.baseline, (*DDC_OPTS, "active=off"), DDC_SYSTEM_OPTS)]
            if not args.skip_cache:
                variants.append(Variant("cache", build_contrib_cache(out), tuple(CACHE_OPTS)))
            times: dict[tuple[str, str], list[float]] = {(w.name, v.name): [] for w in workloads for v in variants}
            if args.system:
                kernel = args.kernel or next((Path(k) for k in sorted(glob.glob(KERNEL_GLOB))), None)
                if kernel is None or not kernel.is_file():
                    raise BenchError(f"no kernel for --system: give --kernel (none matches {KERNEL_GLOB})")
                # A private copy: the images directory belongs to the
                # orchestrator, which may rebuild it while we run.
                kernel = Path(shutil.copy(kernel, out / "vmlinux"))
                files = {"init": loops, "ddc-ptrchase": probe, "sysbench": SYSBENCH, **shared_libraries(SYSBENCH)}
                initrd = out / "initramfs.cpio"
                initrd.write_bytes(cpio_newc({name: path.read_bytes() for name, path in files.items()}))
                specs = [w.spec(programs) for w in workloads]
                for rep in range(args.reps):
                    k = rep % len(variants)
                    for v in variants[k:] + variants[:k]:
                        names = [w.name for w in workloads]
                        for name, sec in system_times(v.system_argv(kernel, initrd, specs), names).items():
                            times[name, v.name].append(sec)
                    LOG.info("repetition %d/%d done", rep + 1, args.reps)
            else:
                pairs = [(w, v) for w in workloads for v in variants]
                for rep in range(args.reps):
                    k = rep % len(pairs)
                    for w, v in pairs[k:] + pairs[:k]:
                        times[w.name, v.name].append(timed(v.argv(w, programs)))
                    LOG.info("repetition %d/%d done", rep + 1, args.reps)
    except BenchError as exc:
        print(f"plugin_overhead: {exc}", file=sys.stderr)
        return 1

    if args.system:
        print(f"\n{QEMU_SYSTEM} -smp 2, {args.reps} interleaved boots each, median seconds timed by the guest "
              "(boot excluded); host shared, so expect noise")
    else:
        print(f"\n{QEMU_USER}, {args.reps} interleaved runs each, median wall seconds "
              "(process start included); host shared, so expect noise")
    # Noise from the host's other users only ever adds time, so next to the
    # ratio of medians the table gives the ratio of the fastest runs: what
    # each variant costs when it ran undisturbed.
    print(f"{'workload':<8} {'variant':<7} {'seconds':>8} {'min':>7} {'max':>7} {'x plain':>8} {'x floor':>8} "
          f"{'min x floor':>12}")
    for w in workloads:
        med = {v.name: statistics.median(times[w.name, v.name]) for v in variants}
        best = {v.name: min(times[w.name, v.name]) for v in variants}
        for v in variants:
            ts = times[w.name, v.name]
            print(f"{w.name:<8} {v.name:<7} {med[v.name]:8.3f} {min(ts):7.3f} {max(ts):7.3f} "
                  f"{med[v.name] / med['plain']:8.2f} {med[v.name] / med['floor']:8.2f} "
                  f"{best[v.name] / best['floor']:12.2f}")
        print(f"{'':<8} ({shlex.join(w.host_argv(programs)[1:]) if w.program else f'{w.size:,} iterations'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
