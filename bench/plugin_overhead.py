"""What libddc costs a guest, next to plain TCG, the floor plugin and QEMU's
contrib cache plugin: one table of medians, printed, never asserted.

    .venv/bin/python bench/plugin_overhead.py [--reps 5] [--scale 1.0]
    .venv/bin/python bench/plugin_overhead.py --system [--kernel VMLINUX]

User mode (qemu-x86_64) on the static workloads in bench/progs/: a pointer
chase, a strided stream and a store loop.  Each repetition runs every
(workload, variant) pair once, in an order rotated from one repetition to the
next, so a burst of load from the other users of the host spreads over all
variants instead of landing on one; the table shows medians.

--system boots qemu-system-x86_64 (TCG, -smp 2, as a compute blade) on a
kernel (default: the first /var/lib/ddc/images/*/vmlinux) with a throwaway
initramfs whose /init is the same program: it runs the three workloads one
after the other, times each with the guest's clock (boot excluded), prints
the times on the serial console and powers off.  One boot per (repetition,
variant).

Variants:
  plain   no plugin
  floor   bench/floor_plugin.c: one callback per access, one range check
  ddc     libddc: three levels (32K/1M/16M), latency 0, mode=account
  ddc-ni  the same with insns=off (no per-TB callback)
  ddc-off the same loaded with active=off, never activated: should match
          plain (no instrumentation while inactive)
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

# Iterations per workload at --scale 1: 0.2-0.4 s of plain TCG each here
# (contrib cache.c takes 30-50 times that).
WORKLOADS: dict[str, int] = {"chase": 30_000_000, "stream": 60_000_000, "store": 60_000_000}

DDC_OPTS = ["mode=account", "local_ns=0", "cache=l1d:32K:8:64:private;l2:1M:16:64:private;llc:16M:16:64:shared"]
CACHE_OPTS = ["dcachesize=32768", "dassoc=8", "dblksize=64", "icachesize=32768", "iassoc=8", "iblksize=64",
              "l2=on", "l2cachesize=1048576", "l2assoc=16", "l2blksize=64", "evict=lru"]


class BenchError(Exception):
    """A build or a run failed; the message carries the command and its output."""


@dataclass(frozen=True)
class Variant:
    name: str
    plugin: Path | None
    opts: tuple[str, ...] = ()

    def plugin_args(self) -> list[str]:
        if self.plugin is None:
            return []
        # QEMU splits -plugin at commas; write a literal one as ",,".
        return ["-plugin", ",".join([str(self.plugin), *(o.replace(",", ",,") for o in self.opts)])]

    def argv(self, prog: Path, workload: str, n: int) -> list[str]:
        return [QEMU_USER, *self.plugin_args(), str(prog), workload, str(n)]

    def system_argv(self, kernel: Path, initrd: Path, counts: Sequence[int]) -> list[str]:
        append = "console=ttyS0 quiet panic=-1 -- all " + " ".join(str(n) for n in counts)
        return [QEMU_SYSTEM, "-accel", "tcg", "-smp", "2", "-m", "512", "-nodefaults", "-display", "none",
                "-no-reboot", "-serial", "stdio", "-monitor", "none", "-kernel", str(kernel),
                "-initrd", str(initrd), "-append", append, *self.plugin_args()]


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
    """An uncompressed initramfs (newc cpio) of regular executable files."""
    out = bytearray()

    def entry(name: str, mode: int, data: bytes, ino: int) -> None:
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0]
        out.extend(b"070701" + b"".join(f"{f:08x}".encode() for f in fields) + name.encode() + b"\0")
        out.extend(b"\0" * (-len(out) % 4))
        out.extend(data)
        out.extend(b"\0" * (-len(out) % 4))

    for ino, (name, data) in enumerate(files.items(), start=1):
        entry(name, 0o100755, data, ino)
    entry("TRAILER!!!", 0, b"", 0)
    return bytes(out)


def system_times(argv: Sequence[str]) -> dict[str, float]:
    """Boot once; the guest's own times per workload, from its console."""
    proc = run(argv, timeout=600)
    times = {}
    for line in proc.stdout.splitlines():
        if line.startswith("overhead_loops: "):
            _, name, sec, _ = line.split()
            times[name] = float(sec)
    if len(times) != 3:
        raise BenchError(f"{shlex.join(argv)}: the guest printed no times:\n{proc.stdout[-2000:]}")
    return times


def timed(argv: Sequence[str]) -> float:
    t0 = time.perf_counter()
    run(argv)
    return time.perf_counter() - t0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=5, help="interleaved repetitions (default 5)")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every workload's length")
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated subset")
    ap.add_argument("--skip-cache", action="store_true", help="leave contrib cache.c out (it is slow)")
    ap.add_argument("--system", action="store_true", help="qemu-system-x86_64 with a kernel and an initramfs")
    ap.add_argument("--kernel", type=Path, help=f"the kernel for --system (default: first of {KERNEL_GLOB})")
    ap.add_argument("--debug", action="store_true", help="log every command")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, format="%(message)s")
    workloads = {w: max(1, int(WORKLOADS[w] * args.scale)) for w in args.workloads.split(",")}

    try:
        run(["make", "-s", "-C", str(DEVICES)])
        with tempfile.TemporaryDirectory(prefix="ddc-overhead-") as tmp:
            out = Path(tmp)
            prog = out / "overhead_loops"
            run(["gcc", "-O2", "-static", "-o", str(prog), str(LOOPS_SRC)])
            variants = [
                Variant("plain", None),
                Variant("floor", DEVICES / "build" / "libfloor.so"),
                Variant("ddc", DEVICES / "build" / "libddc.so", tuple(DDC_OPTS)),
                Variant("ddc-ni", DEVICES / "build" / "libddc.so", (*DDC_OPTS, "insns=off")),
                Variant("ddc-off", DEVICES / "build" / "libddc.so", (*DDC_OPTS, "active=off")),
            ]
            if not args.skip_cache:
                variants.append(Variant("cache", build_contrib_cache(out), tuple(CACHE_OPTS)))
            times: dict[tuple[str, str], list[float]] = {(w, v.name): [] for w in workloads for v in variants}
            if args.system:
                kernel = args.kernel or next((Path(k) for k in sorted(glob.glob(KERNEL_GLOB))), None)
                if kernel is None or not kernel.is_file():
                    raise BenchError(f"no kernel for --system: give --kernel (none matches {KERNEL_GLOB})")
                if list(workloads) != list(WORKLOADS):
                    raise BenchError("--system runs every workload; leave --workloads out")
                # A private copy: the images directory belongs to the
                # orchestrator, which may rebuild it while we run.
                kernel = Path(shutil.copy(kernel, out / "vmlinux"))
                initrd = out / "initramfs.cpio"
                initrd.write_bytes(cpio_newc({"init": prog.read_bytes()}))
                for rep in range(args.reps):
                    k = rep % len(variants)
                    for v in variants[k:] + variants[:k]:
                        for w, sec in system_times(v.system_argv(kernel, initrd, list(workloads.values()))).items():
                            times[w, v.name].append(sec)
                    LOG.info("repetition %d/%d done", rep + 1, args.reps)
            else:
                pairs = [(w, v) for w in workloads for v in variants]
                for rep in range(args.reps):
                    k = rep % len(pairs)
                    for w, v in pairs[k:] + pairs[:k]:
                        times[w, v.name].append(timed(v.argv(prog, w, workloads[w])))
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
    print(f"{'workload':<8} {'variant':<7} {'seconds':>8} {'min':>7} {'max':>7} {'x plain':>8} {'x floor':>8}")
    for w, n in workloads.items():
        med = {v.name: statistics.median(times[w, v.name]) for v in variants}
        for v in variants:
            ts = times[w, v.name]
            print(f"{w:<8} {v.name:<7} {med[v.name]:8.3f} {min(ts):7.3f} {max(ts):7.3f} "
                  f"{med[v.name] / med['plain']:8.2f} {med[v.name] / med['floor']:8.2f}")
        print(f"{'':<8} ({n:,} iterations)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
