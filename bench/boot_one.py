#!/usr/bin/env python3
"""Boot guest images with plain QEMU and time QEMU start -> SSH banner -> SSH login.

The VM is the one the orchestrator asks libvirt for (q35, 2 vCPUs, NUMA node 0 =
1G local RAM with the vCPUs, node 1 = 1G CPU-less from a shared file in /dev/shm,
HMAT, direct kernel boot, virtio-blk overlay, virtio-net user networking with a
host port forward, serial console to a file), and the per-blade data goes in
through fw_cfg exactly as images/README.md specifies.  "Login" is a real
``ssh -o StrictHostKeyChecking=yes`` with the injected keys running ``true``.

    .venv/bin/python bench/boot_one.py                      # one blade, 3 runs
    .venv/bin/python bench/boot_one.py --blades 2 --runs 5  # two at once
    .venv/bin/python bench/boot_one.py --analyze            # + systemd-analyze

Everything it starts (QEMU processes, overlays, /dev/shm files) is removed on
exit, Ctrl-C included.  Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestrator import image as images  # noqa: E402
from orchestrator.guest import Endpoint  # noqa: E402
from orchestrator.guest import wait_banner as guest_wait_banner  # noqa: E402
from orchestrator.runner import run  # noqa: E402

LOG = logging.getLogger("boot_one")


@dataclass(frozen=True)
class Blade:
    name: str
    port: int
    workdir: Path
    shm: Path
    guest_ip: str = "10.0.2.15"     # where the forwarded port goes
    network: Path | None = None     # fw_cfg opt/ddc/network, if any

    @property
    def key(self) -> Path:
        return self.workdir / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.workdir / "known_hosts"

    @property
    def serial(self) -> Path:
        return self.workdir / "serial.log"


@dataclass(frozen=True)
class Result:
    name: str
    banner_s: float
    login_s: float


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prepare(img: images.GuestImage, name: str, root: Path, network: str | None = None,
            guest_ip: str = "10.0.2.15") -> Blade:
    """Keys, fw_cfg blobs and a qcow2 overlay for one blade under ``root/name``."""
    workdir = root / name
    workdir.mkdir()
    blade = Blade(name=name, port=free_port(), workdir=workdir,
                  shm=Path("/dev/shm") / f"ddc-bench-{os.getpid()}-{name}", guest_ip=guest_ip,
                  network=workdir / "network" if network is not None else None)
    if blade.network is not None and network is not None:
        blade.network.write_text(network)
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"host@{name}",
         "-f", workdir / "host_key"])
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench", "-f", blade.key])
    host_pub = (workdir / "host_key.pub").read_text().split()
    blade.known_hosts.write_text(f"[127.0.0.1]:{blade.port} {host_pub[0]} {host_pub[1]}\n")
    (workdir / "hostname").write_text(name + "\n")
    shutil.copyfile(blade.key.with_suffix(".pub"), workdir / "authorized_keys")
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", img.rootfs,
         workdir / "overlay.qcow2"])
    return blade


def qemu_argv(img: images.GuestImage, blade: Blade, accel: str) -> list[str]:
    w = blade.workdir
    argv = [
        "qemu-system-x86_64", "-name", blade.name, "-nodefaults", "-no-user-config",
        "-display", "none", "-no-reboot",
        "-machine", "q35,hmat=on", "-accel", "tcg,thread=multi" if accel == "tcg" else "kvm",
        "-cpu", "max", "-smp", "2", "-m", "2G",
        "-object", "memory-backend-ram,id=m0,size=1G",
        "-object", f"memory-backend-file,id=m1,size=1G,share=on,mem-path={blade.shm}",
        "-numa", "node,nodeid=0,cpus=0-1,memdev=m0",
        "-numa", "node,nodeid=1,memdev=m1,initiator=0",
        "-numa", "hmat-lb,initiator=0,target=0,hierarchy=memory,data-type=access-latency,latency=80",
        "-numa", "hmat-lb,initiator=0,target=0,hierarchy=memory,data-type=access-bandwidth,bandwidth=20G",
        "-numa", "hmat-lb,initiator=0,target=1,hierarchy=memory,data-type=access-latency,latency=400",
        "-numa", "hmat-lb,initiator=0,target=1,hierarchy=memory,data-type=access-bandwidth,bandwidth=5G",
        "-kernel", str(img.kernel), "-append", img.cmdline,
        "-drive", f"file={w / 'overlay.qcow2'},if=none,id=d0,format=qcow2",
        "-device", "virtio-blk-pci,drive=d0",
        "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{blade.port}-{blade.guest_ip}:22",
        "-device", "virtio-net-pci,netdev=n0",
        "-chardev", f"file,id=s0,path={blade.serial}", "-serial", "chardev:s0",
        "-fw_cfg", f"name=opt/ddc/hostname,file={w / 'hostname'}",
        "-fw_cfg", f"name=opt/ddc/ssh_host_ed25519_key,file={w / 'host_key'}",
        "-fw_cfg", f"name=opt/ddc/authorized_keys,file={w / 'authorized_keys'}",
    ]
    if blade.network is not None:
        argv += ["-fw_cfg", f"name=opt/ddc/network,file={blade.network}"]
    if img.initrd is not None:
        argv += ["-initrd", str(img.initrd)]
    return argv


def wait_banner(port: int, deadline: float) -> bool:
    """True once sshd's "SSH-" line arrives on the forwarded port (the
    orchestrator's own readiness check: overlapping attempts, first banner wins)."""
    ep = Endpoint(blade="bench", port=port, key=Path("/dev/null"), known_hosts=Path("/dev/null"))
    return guest_wait_banner(ep, deadline)


def ssh_argv(blade: Blade, command: str) -> list[str]:
    """ssh runs ``command`` through the guest's shell: it is one string on purpose."""
    return ["ssh", "-q", "-p", str(blade.port), "-i", str(blade.key),
            "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={blade.known_hosts}",
            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
            "root@127.0.0.1", "--", command]


def login(blade: Blade, deadline: float) -> bool:
    while time.monotonic() < deadline:
        proc = run(ssh_argv(blade, "true"), check=False, timeout=max(1.0, deadline - time.monotonic()))
        if proc.returncode == 0:
            return True
        LOG.debug("%s: ssh exit %d: %s", blade.name, proc.returncode, proc.stderr.strip())
        time.sleep(0.1)
    return False


@contextlib.contextmanager
def qemu(argv: list[str], blade: Blade) -> Iterator[subprocess.Popen[bytes]]:
    LOG.debug("+ %s", " ".join(argv))
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        blade.shm.unlink(missing_ok=True)


def boot_all(img: images.GuestImage, count: int, timeout: float, accel: str,
             analyze: bool, keep: Path | None) -> list[Result | None]:
    root = Path(tempfile.mkdtemp(prefix="ddc-boot-"))
    results: list[Result | None] = [None] * count
    try:
        blades = [prepare(img, f"blade{i}", root) for i in range(count)]
        with contextlib.ExitStack() as stack:
            start = time.monotonic()
            procs = [stack.enter_context(qemu(qemu_argv(img, b, accel), b)) for b in blades]

            def one(i: int) -> None:
                b = blades[i]
                deadline = start + timeout
                if not wait_banner(b.port, deadline):
                    return
                banner = time.monotonic() - start
                if not login(b, deadline):
                    return
                results[i] = Result(b.name, banner, time.monotonic() - start)

            threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            for b, p, r in zip(blades, procs, results, strict=True):
                if r is None:
                    out = p.stdout.read1(4000).decode(errors="replace") if p.poll() is not None else ""  # type: ignore[union-attr]
                    print(f"{b.name}: no SSH login within {timeout:.0f} s; qemu: {out.strip()}")
                    print("--- serial console tail ---")
                    print("\n".join(b.serial.read_text(errors="replace").splitlines()[-40:]))
            if analyze:
                for b, r in zip(blades, results, strict=True):
                    if r is not None:
                        show_analysis(b, keep)
        if keep is not None:
            for b in blades:
                shutil.copyfile(b.serial, keep / f"{b.name}.serial.log")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return results


def show_analysis(blade: Blade, keep: Path | None) -> None:
    for command in ("systemd-analyze", "systemd-analyze critical-chain ssh.service",
                    "systemd-analyze blame | head -30", "systemctl list-units --state=failed --no-legend",
                    "hostname; cat /etc/hosts; ls -l /etc/ssh/ssh_host_* /root/.ssh; ip -br addr",
                    "systemctl is-active redis-server memcached; systemctl is-enabled redis-server",
                    "numactl -H"):
        proc = run(ssh_argv(blade, command), check=False, timeout=60)
        print(f"--- {blade.name}: {command}")
        print((proc.stdout + proc.stderr).rstrip())
    if keep is not None:
        for name, command in (("dmesg", "dmesg"), ("journal", "journalctl -b -o short-monotonic")):
            proc = run(ssh_argv(blade, command), check=False, timeout=60)
            (keep / f"{blade.name}.{name}.txt").write_text(proc.stdout + proc.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="debian-bookworm")
    parser.add_argument("--image", type=Path, help="boot this cache entry instead of the recipe's current one")
    parser.add_argument("--blades", type=int, default=1, help="how many to start at the same time")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=90.0)
    parser.add_argument("--accel", default="tcg", choices=["tcg", "kvm"],
                        help="kvm hangs Debian kernels on this host's nested KVM")
    parser.add_argument("--analyze", action="store_true", help="print systemd-analyze from each guest")
    parser.add_argument("--keep-serial", type=Path, help="copy the serial logs of the last run here")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING)

    img = images.image_at(args.image) if args.image else images.cached_image(args.recipe)
    if img is None:
        print(f"image {args.recipe} is not built: run bench/image_build.py or build_image() first")
        return 2
    print(f"image {img.directory.name}; {args.blades} blade(s) at once, {args.runs} run(s), "
          f"accel={args.accel}, host cores={os.cpu_count()}")
    per_run: list[float] = []
    failures = 0
    for n in range(args.runs):
        results = boot_all(img, args.blades, args.timeout, args.accel,
                           args.analyze and n == args.runs - 1, args.keep_serial)
        cells = [f"{r.name}: banner {r.banner_s:5.2f} s, login {r.login_s:5.2f} s" if r else "FAILED"
                 for r in results]
        print(f"run {n + 1}: " + " | ".join(cells))
        if all(results):
            per_run.append(max(r.login_s for r in results if r))
        else:
            failures += 1
    if per_run:
        print(f"slowest blade's QEMU start -> SSH login: median {statistics.median(per_run):.2f} s, "
              f"min {min(per_run):.2f} s, max {max(per_run):.2f} s over {len(per_run)} run(s)"
              + (f"; {failures} failed run(s)" if failures else ""))
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
