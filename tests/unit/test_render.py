from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from orchestrator.render import DomainConfig, domain_xml, hmat_bandwidth, qemu_args
from orchestrator.spec import GiB, load_testbed
from orchestrator.topology import resolve
from tests.conftest import EXAMPLES

QNS = "{http://libvirt.org/schemas/domain/qemu/1.0}"


def config(accel: str = "tcg") -> DomainConfig:
    rack = resolve(load_testbed(EXAMPLES / "rack.yaml"), Path("/dev/shm/ddc"))
    return DomainConfig(testbed="rack0", blade=rack.compute_blades[1], accel=accel,
                        kernel=Path("/img/vmlinuz"), initrd=Path("/img/initrd.img"),
                        cmdline="root=/dev/vda console=ttyS0", disk=Path("/st/cb1/root.qcow2"),
                        console_log=Path("/st/cb1/console.log"), ssh_port=40022,
                        fw_cfg=(("opt/ddc/hostname", Path("/st/cb1/hostname")),))


def test_domain_xml_native_part() -> None:
    root = ET.fromstring(domain_xml(config()))
    assert root.get("type") == "qemu"
    assert root.findtext("name") == "ddc-rack0-cb1"
    assert root.find("features/acpi") is not None, "HMAT is an ACPI table"
    # node 0 is shared memory like the remote slices, so the host costs are alike
    assert root.find("memoryBacking/source").get("type") == "memfd"
    assert root.find("memoryBacking/access").get("mode") == "shared"
    cells = root.findall("cpu/numa/cell")
    assert [(c.get("id"), c.get("cpus"), c.get("memory")) for c in cells] == [("0", "0-1", str(GiB // 1024))]
    assert root.find("cpu").get("mode") == "maximum"
    assert root.find("os/kernel").text == "/img/vmlinuz"
    assert root.find("devices/disk/source").get("file") == "/st/cb1/root.qcow2"
    entry = root.find("sysinfo/entry")
    assert (entry.get("name"), entry.get("file")) == ("opt/ddc/hostname", "/st/cb1/hostname")
    meta = root.find("metadata/{https://ddc-testbed.invalid/xmlns/1}blade")
    assert (meta.get("testbed"), meta.get("name")) == ("rack0", "cb1")


def test_kvm_uses_host_cpu() -> None:
    root = ET.fromstring(domain_xml(config("kvm")))
    assert root.get("type") == "kvm" and root.find("cpu").get("mode") == "host-passthrough"


def test_remote_node_arguments() -> None:
    args = qemu_args(config())
    pairs = list(zip(args[::2], args[1::2], strict=True))
    assert pairs[0] == ("-m", "size=2048M")
    backend = json.loads(dict(pairs)["-object"])
    assert backend == {"qom-type": "memory-backend-file", "id": "ddc-node1",
                       "mem-path": "/dev/shm/ddc/rack0/mb0/cb1-node1", "size": GiB, "share": True}
    numa = [v for k, v in pairs if k == "-numa"]
    assert "node,nodeid=1,memdev=ddc-node1,initiator=0" in numa
    assert "dist,src=0,dst=1,val=25" in numa
    assert "hmat-lb,initiator=0,target=0,hierarchy=memory,data-type=access-latency,latency=100" in numa
    assert "hmat-lb,initiator=0,target=1,hierarchy=memory,data-type=access-latency,latency=250" in numa
    assert (f"hmat-lb,initiator=0,target=1,hierarchy=memory,data-type=access-bandwidth,"
            f"bandwidth={hmat_bandwidth(16)}") in numa
    assert ("-machine", "hmat=on") in pairs
    assert ("-netdev", "user,id=ddcnet0,hostfwd=tcp:127.0.0.1:40022-:22") in pairs
    nic = json.loads(dict(pairs)["-device"])  # JSON, or QEMU creates it before libvirt's devices
    assert nic == {"driver": "virtio-net-pci", "netdev": "ddcnet0", "id": "ddcnic0"}


def test_qemu_args_reach_the_xml_escaped() -> None:
    root = ET.fromstring(domain_xml(config()))
    values = [a.get("value") for a in root.find(f"{QNS}commandline")]
    assert values == qemu_args(config())


def test_hmat_bandwidth_units() -> None:
    assert hmat_bandwidth(16) == 15259 * 1024 * 1024  # 16e9 B/s in whole MiB/s
