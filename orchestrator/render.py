"""Topology -> libvirt domain XML (jinja2).

libvirt describes node 0 (the blade's DRAM and all its vCPUs) natively. The
remote nodes go on QEMU's command line through ``<qemu:commandline>``, because
libvirt puts every cell's backing file under its own ``memory_backing_dir`` and
cannot point one cell at a memory blade's slice file. Appending them needs three
QEMU facts, each checked on QEMU 7.2:

* ``-m`` is a merging option, so a second ``-m size=`` raises the RAM size to
  the sum of all nodes (QEMU insists that the nodes add up to it);
* ``-numa node,memdev=`` may follow libvirt's node 0, and a CPU-less node needs
  ``initiator=`` once HMAT is on;
* ``-machine hmat=on`` merges into libvirt's ``-machine``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import jinja2

from .spec import MiB
from .topology import ComputeBlade

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("orchestrator", "templates"),
    autoescape=True,  # XML: names are validated, but paths and cmdlines are escaped regardless
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
)


@dataclass(frozen=True)
class DomainConfig:
    """Everything one compute blade's domain needs, resolved to host paths and ports."""

    testbed: str
    blade: ComputeBlade
    accel: str  # "kvm" or "tcg"
    kernel: Path
    initrd: Path | None
    cmdline: str
    disk: Path  # the blade's qcow2 overlay
    console_log: Path
    ssh_port: int
    fw_cfg: tuple[tuple[str, Path], ...]  # fw_cfg name -> file (keys, hostname)
    extra_args: tuple[str, ...] = field(default=())  # e.g. the latency plugin
    region_ports: int = 8  # PCIe root ports, about 6 left empty for regions attached at runtime (rack.py)


# libvirt user aliases start with "ua-"; QEMU sees them as the root ports' ids.
REGION_PORT_PREFIX = "ua-ddc-port"
REGION_MAX = 1 << 30  # the largest region a port has room for (its BAR window)


def hmat_bandwidth(gbps: float) -> int:
    """GB/s -> bytes/s as QEMU's hmat-lb wants it, rounded to whole MiB/s (the
    HMAT entry unit Linux reports in)."""
    return max(1, round(gbps * 1e9 / MiB)) * MiB


def _json(obj: dict[str, object]) -> str:
    return json.dumps(obj, separators=(",", ":"))


def qemu_args(d: DomainConfig) -> list[str]:
    """QEMU arguments libvirt cannot express: remote NUMA nodes, SLIT, HMAT, network."""
    blade = d.blade
    args = ["-m", f"size={blade.total_memory // MiB}M"]
    for node in blade.remote_nodes:
        backend = {"qom-type": "memory-backend-file", "id": f"ddc-node{node.id}",
                   "mem-path": str(node.backing), "size": node.size, "share": True}
        args += ["-object", _json(backend),
                 "-numa", f"node,nodeid={node.id},memdev=ddc-node{node.id},initiator=0"]
    n = len(blade.nodes)
    if n > 1:
        for i in range(n):
            for j in range(i + 1, n):
                args += ["-numa", f"dist,src={i},dst={j},val={blade.distances[i][j]}"]
        args += ["-machine", "hmat=on"]
        for node in blade.nodes:
            lb = f"hmat-lb,initiator=0,target={node.id},hierarchy=memory"
            args += ["-numa", f"{lb},data-type=access-latency,latency={node.latency_ns}"]
            if node.bandwidth_gbps:
                args += ["-numa", f"{lb},data-type=access-bandwidth,bandwidth={hmat_bandwidth(node.bandwidth_gbps)}"]
    # User-mode networking with one port forward on loopback: no bridge, no NAT
    # rules on the host, and nothing reachable from outside.
    # The device in JSON syntax: QEMU 7.2 creates key=value -devices before JSON
    # ones, so a key=value NIC would take a PCI slot libvirt has assigned.
    args += ["-netdev", f"user,id=ddcnet0,hostfwd=tcp:127.0.0.1:{d.ssh_port}-:22",
             "-device", _json({"driver": "virtio-net-pci", "netdev": "ddcnet0", "id": "ddcnic0"})]
    if d.accel == "tcg":
        # TCG's `max` CPU says AuthenticAMD; with that vendor an injected memory
        # error panics the guest ("Uncorrected error without MCA Recovery"), with
        # Intel's Linux recovers and signals the processes that used the page
        # (`ddc fail` of a memory blade). The last -cpu wins over libvirt's.
        args += ["-cpu", "max,vendor=GenuineIntel"]
    args += list(d.extra_args)
    return args


def domain_xml(d: DomainConfig) -> str:
    return _ENV.get_template("domain.xml.j2").render(d=d, qemu_args=qemu_args(d),
                                                     region_port_prefix=REGION_PORT_PREFIX, region_max=REGION_MAX)
