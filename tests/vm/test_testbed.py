"""The example rack, booted for real: what Linux inside each blade sees."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from orchestrator import guest, state
from orchestrator.guest import connect
from orchestrator.testbed import endpoint
from tests.vm.conftest import ddc, leftovers, make_rack

pytestmark = pytest.mark.vm

MB = 1024 * 1024


@dataclass(frozen=True)
class Early:
    """What a user saw in a blade the moment `ddc up` returned."""

    state: str  # systemctl is-system-running
    finished_after_up_s: float  # when systemd finished the boot, from when `up` returned (at most)
    md5: str  # of a file written to /tmp then
    written_at: float  # time.monotonic()


EARLY: dict[str, Early] = {}


@pytest.fixture(scope="module")
def rack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = make_rack(tmp_path_factory.mktemp("rack"), "t-rack")
    ddc("down", str(path), check=False)  # a previous crashed run
    try:
        ddc("up", str(path))
        returned = time.monotonic()
        # When did the boot finish, in the guest's clock, against when `up`
        # returned? /proc/uptime is read first, so at most `asked - returned`
        # after `up` returned (a login under TCG takes seconds).
        st = state.load("t-rack")
        assert st is not None
        conn = connect(endpoint(st, "cb0"))
        try:
            asked = time.monotonic()
            boot = guest.run(conn, "cat /proc/uptime; systemctl show -p FinishTimestampMonotonic --value; "
                                   "systemctl is-system-running", check=False).stdout.split()
        finally:
            conn.close()
        finished = int(boot[2]) / 1e6 - (float(boot[0]) - (asked - returned))
        # As a user would, at once: a file of 0.8 MB into /tmp.
        md5 = ddc("ssh", str(path), "cb0", "--", "sh", "-c",
                  "head -c 800000 /dev/urandom > /tmp/early && md5sum /tmp/early").stdout.split()[0]
        EARLY["cb0"] = Early(state=boot[-1], finished_after_up_s=finished, md5=md5, written_at=time.monotonic())
        yield path
    finally:
        ddc("down", str(path), check=False)
        assert leftovers("t-rack") == [], f"`ddc down` left {leftovers('t-rack')}"


def sh(rack: Path, blade: str, command: str) -> str:
    st = state.load(yaml.safe_load(rack.read_text())["name"])
    assert st is not None
    conn = connect(endpoint(st, blade))
    try:
        return guest.run(conn, command, timeout=120, blade=blade).stdout
    finally:
        conn.close()


def test_up_returns_once_boot_is_over_and_keeps_what_is_written(rack: Path) -> None:
    early = EARLY["cb0"]
    assert early.state in ("running", "degraded"), early
    # FinishTimestampMonotonic is 0 while the boot runs; 0.3 s is for the
    # time the guest took to reach `cat` after the login.
    assert early.finished_after_up_s <= 0.3, early
    time.sleep(max(0.0, early.written_at + 15 - time.monotonic()))
    # Boot jobs that ran after sshd answered (systemd-tmpfiles-setup empties /tmp)
    # once deleted such a file; `up` now waits for them.
    assert sh(rack, "cb0", "md5sum /tmp/early").split()[0] == early.md5


@pytest.mark.parametrize("blade", ["cb0", "cb1"])
def test_numa_layout(rack: Path, blade: str) -> None:
    out = sh(rack, blade, "numactl -H")
    assert re.search(r"^available: 2 nodes \(0-1\)$", out, re.M), out
    assert re.search(r"^node 0 cpus: 0 1$", out, re.M), out
    assert re.search(r"^node 1 cpus:\s*$", out, re.M), out
    sizes = {int(n): int(mb) for n, mb in re.findall(r"^node (\d) size: (\d+) MB$", out, re.M)}
    # numactl shows what the kernel manages. Node 0 also holds the kernel image
    # and its memmap (about 60 MB of a stock Debian kernel), the remote node
    # only its own memmap.
    assert 1024 * 0.96 <= sizes[1] <= 1024, out
    assert 1024 * 0.92 <= sizes[0] <= 1024, out
    # What QEMU gave each node (present pages, before any reservation) is exact.
    present = sh(rack, blade, "awk '/^Node/ {n=$2} /present/ {p[n]+=$2} END {for (n in p) print n, p[n]}' "
                              "/proc/zoneinfo")
    pages = {int(n.rstrip(",")): int(p) for n, p in (line.split() for line in present.strip().splitlines())}
    assert abs(pages[1] * 4096 - 1024 * MB) <= 0.01 * 1024 * MB, present
    assert abs(pages[0] * 4096 - 1024 * MB) <= 0.01 * 1024 * MB, present
    dist = re.search(r"^\s+0:\s+(\d+)\s+(\d+)\s*$", out, re.M)
    assert dist and dist.groups() == ("10", "25"), out


@pytest.mark.parametrize("blade", ["cb0", "cb1"])
def test_hmat_and_slit_in_sysfs(rack: Path, blade: str) -> None:
    out = sh(rack, blade, "cd /sys/devices/system/node && for n in 0 1; do "
                          "echo $n $(cat node$n/access0/initiators/read_latency) $(cat node$n/distance); done")
    rows = {int(r.split()[0]): r.split()[1:] for r in out.strip().splitlines()}
    assert rows[0] == ["100", "10", "25"], out
    assert rows[1] == ["250", "25", "10"], out


def test_membind_takes_memory_from_node1(rack: Path) -> None:
    # stress-ng's vm worker keeps 256 MiB mapped and touched; numastat -p reads
    # where the processes' pages really are. Poll: under TCG the worker may
    # need a while to touch all of it.
    out = sh(rack, "cb0", "numactl --membind=1 stress-ng --vm 1 --vm-bytes 256M --vm-keep --vm-hang 0 "
                          "--timeout 90s >/dev/null 2>&1 & pid=$!; "
                          "for i in $(seq 60); do sleep 1; "
                          "  t=$(numastat -p stress-ng | awk '/^Total/ {print $2, $3}'); "
                          "  echo \"$t\" | awk '$2 >= 240 {exit 0} {exit 1}' && break; done; "
                          "echo $t; kill $pid; wait")
    node0, node1 = (float(x) for x in out.split()[:2])
    assert node1 >= 240, out  # MB on node 1
    assert node0 < 0.1 * node1, out


def test_blades_are_distinct_and_pinned(rack: Path) -> None:
    assert sh(rack, "cb0", "hostname").strip() == "cb0"
    assert sh(rack, "cb1", "hostname").strip() == "cb1"
    # Each blade's RAM comes from its own slice file of the same pool.
    st = state.load("t-rack")
    assert st is not None
    assert len({st.blades[b].ssh_port for b in ("cb0", "cb1")}) == 2
    known = st.known_hosts.read_text().splitlines()
    assert len(known) == 2 and all(line.startswith("[127.0.0.1]:") for line in known)


def test_ssh_command_returns_exit_code(rack: Path) -> None:
    assert ddc("ssh", str(rack), "cb1", "--", "sh", "-c", "exit 7", check=False).returncode == 7
    out = ddc("ssh", str(rack), "cb0", "--", "cat", "/proc/sys/kernel/hostname")
    assert out.stdout.strip() == "cb0"


def test_second_up_changes_nothing(rack: Path) -> None:
    before = json.loads(ddc("status", str(rack), "--json").stdout)
    again = ddc("up", str(rack))
    assert "already up" in again.stderr
    after = json.loads(ddc("status", str(rack), "--json").stdout)
    assert before == after
    assert [b["state"] for b in after[0]["blades"]] == ["running", "running"]


def test_status_lists_the_testbed(rack: Path) -> None:
    beds = json.loads(ddc("status", "--json").stdout)
    (bed,) = [b for b in beds if b["name"] == "t-rack"]
    assert bed["phase"] == "up"
    assert {b["name"]: b["nodes"][1]["memory_blade"] for b in bed["blades"]} == {"cb0": "mb0", "cb1": "mb0"}
