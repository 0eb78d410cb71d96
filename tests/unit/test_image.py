"""Guest image recipes: loading, validation, digests, cache lookup, initrd pieces.

No VM and no mmdebstrap: recipes are written into a temporary images/ directory
(DDC_IMAGES_DIR), except for the checks on the real images/debian-bookworm.
"""

from __future__ import annotations

import gzip
import json
import lzma
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from orchestrator import image
from orchestrator.errors import CommandError, ImageError

MINIMAL = """\
suite: bookworm
sources:
  - deb http://deb.debian.org/debian bookworm main
packages: [systemd, openssh-server]
"""


@pytest.fixture
def images_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "images"
    (root / "initrd").mkdir(parents=True)
    (root / "initrd" / "init.c").write_text("int main(void) { return 0; }\n")
    monkeypatch.setenv("DDC_IMAGES_DIR", str(root))
    monkeypatch.setenv("DDC_HOME", str(tmp_path / "home"))
    return root


def write_recipe(images_dir: Path, name: str, text: str = MINIMAL) -> Path:
    directory = images_dir / name
    (directory / "files" / "etc").mkdir(parents=True)
    (directory / "recipe.yaml").write_text(text)
    (directory / "files" / "etc" / "motd").write_text("hello\n")
    return directory


# --------------------------------------------------------------------------- the real recipe


def test_real_recipe_loads_with_the_required_packages() -> None:
    assert "debian-bookworm" in image.recipe_names()
    recipe = image.load_recipe("debian-bookworm")
    required = {"linux-image-amd64", "systemd", "openssh-server", "numactl", "linux-perf", "iproute2",
                "procps", "kmod", "sysbench", "stress-ng", "redis-server", "redis-tools", "memcached",
                "libmemcached-tools", "mbw"}
    assert required <= set(recipe.packages)
    assert "cloud-init" not in recipe.packages
    # Services the workload packages enable must not start at boot.
    assert {"redis-server.service", "memcached.service"} <= set(recipe.disable)
    assert "ddc-fwcfg.service" in recipe.enable
    cmdline = image.kernel_cmdline(recipe).split()
    assert cmdline[:4] == ["root=/dev/vda", "rootfstype=ext4", "rw", "console=ttyS0"]
    assert {"virtio_blk", "ext4", "virtio_pci"} <= set(recipe.initrd_modules)


def test_real_recipe_ships_the_guest_side_of_the_contract() -> None:
    files = image.load_recipe("debian-bookworm").files
    script = (files / "usr/local/sbin/ddc-fwcfg").read_text()
    for key in ("hostname", "ssh_host_ed25519_key", "authorized_keys", "network"):
        assert f"blob {key}" in script or f'"$fw/{key}/raw"' in script
    assert "/sys/firmware/qemu_fw_cfg/by_name/opt/ddc" in script
    sshd = (files / "etc/ssh/sshd_config.d/ddc.conf").read_text()
    assert "HostKey /etc/ssh/ssh_host_ed25519_key" in sshd
    assert "PasswordAuthentication no" in sshd
    network = (files / "etc/systemd/network/90-ddc-default.network").read_text()
    assert "Address=10.0.2.15/24" in network and "Gateway=10.0.2.2" in network


def test_real_digest_is_stable() -> None:
    first = image.image_digest("debian-bookworm")
    assert first == image.image_digest("debian-bookworm")
    assert len(first) == 64 and int(first, 16) >= 0


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize("name", ["", "../etc", "a/b", "two words", "..", "UPPER", "-dash", "a\nb"])
def test_bad_names_are_rejected(images_dir: Path, name: str) -> None:
    with pytest.raises(ImageError) as err:
        image.image_digest(name)
    assert "invalid image recipe name" in str(err.value)
    assert err.value.hint


def test_unknown_recipe_names_the_known_ones(images_dir: Path) -> None:
    write_recipe(images_dir, "small")
    with pytest.raises(ImageError) as err:
        image.load_recipe("nope")
    assert "unknown image recipe 'nope'" in err.value.message
    assert "small" in (err.value.hint or "")


def test_recipe_names_lists_only_directories_with_a_recipe(images_dir: Path) -> None:
    write_recipe(images_dir, "b-one")
    write_recipe(images_dir, "a-two")
    (images_dir / "no-recipe").mkdir()
    assert image.recipe_names() == ["a-two", "b-one"]


# --------------------------------------------------------------------------- loading


def test_minimal_recipe_gets_defaults(images_dir: Path) -> None:
    write_recipe(images_dir, "small")
    recipe = image.load_recipe("small")
    assert recipe.packages == ("systemd", "openssh-server")
    assert recipe.rootfs_size == "4G"
    assert recipe.hostname == "ddc-blade"
    assert recipe.uncompressed_kernel is True
    assert recipe.probes is None
    assert image.kernel_cmdline(recipe) == "root=/dev/vda rootfstype=ext4 rw console=ttyS0"


@pytest.mark.parametrize("extra, words", [
    ("packagez: [x]\n", ["unknown key", "'packagez'", "valid keys here", "packages"]),
    ("rootfs_size: 4X\n", ["'rootfs_size'", "'4X'", "2G"]),
    ("hostname: My_Host\n", ["'hostname'", "'My_Host'"]),
    ("units:\n  mask: [redis]\n", ["'units.mask[0]'", "'redis'", "unit name"]),
    ("units:\n  enable: ssh.service\n", ["'units.enable' must be a list"]),
    ("units:\n  start: [a.service]\n", ["under 'units'", "'start'"]),
    ("units: [a.service]\n", ["units must be a mapping"]),
    ("kernel:\n  cmdline: [root=/dev/sda]\n", ["'root=/dev/sda'", "builder owns"]),
    ("kernel:\n  cmdline: ['a b']\n", ["'kernel.cmdline[0]'"]),
    ("kernel:\n  initrd_modules: ['virtio/blk']\n", ["'kernel.initrd_modules[0]'", "kernel module"]),
    ("kernel:\n  uncompressed: maybe\n", ["'kernel.uncompressed'", "true or false"]),
    ("remove: [etc/ssh]\n", ["'remove[0]'", "absolute path"]),
    ("probes:\n  sources: x\n  destination: usr/bin\n", ["'probes.destination'"]),
])
def test_malformed_recipe_names_the_key(images_dir: Path, extra: str, words: list[str]) -> None:
    write_recipe(images_dir, "bad", MINIMAL + extra)
    with pytest.raises(ImageError) as err:
        image.load_recipe("bad")
    for word in words:
        assert word in str(err.value)
    assert "images/bad/recipe.yaml" in err.value.message


def test_recipe_must_have_packages_and_sources(images_dir: Path) -> None:
    write_recipe(images_dir, "nopkg", "suite: bookworm\nsources: ['deb http://x bookworm main']\n")
    with pytest.raises(ImageError, match="'packages' is empty"):
        image.load_recipe("nopkg")
    write_recipe(images_dir, "nosrc", "suite: bookworm\nsources: ['http://x']\npackages: [a1]\n")
    with pytest.raises(ImageError, match=r"'sources\[0\]'"):
        image.load_recipe("nosrc")


def test_yaml_syntax_error_is_an_image_error(images_dir: Path) -> None:
    write_recipe(images_dir, "broken", "suite: [bookworm\n")
    with pytest.raises(ImageError, match="cannot read"):
        image.load_recipe("broken")


def test_top_level_must_be_a_mapping(images_dir: Path) -> None:
    write_recipe(images_dir, "list", "- a\n- b\n")
    with pytest.raises(ImageError, match="the file must be a mapping"):
        image.load_recipe("list")


# --------------------------------------------------------------------------- digest


def test_digest_changes_with_recipe_files_and_builder(images_dir: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    directory = write_recipe(images_dir, "small")
    base = image.image_digest("small")
    (directory / "files" / "etc" / "motd").write_text("changed\n")
    after_file = image.image_digest("small")
    assert after_file != base
    (directory / "files" / "etc" / "motd").chmod(0o755)
    after_mode = image.image_digest("small")
    assert after_mode != after_file
    (directory / "files" / "etc" / "new").symlink_to("/dev/null")
    after_link = image.image_digest("small")
    assert after_link != after_mode
    (images_dir / "initrd" / "init.c").write_text("int main(void) { return 1; }\n")
    after_init = image.image_digest("small")
    assert after_init != after_link
    monkeypatch.setattr(image, "BUILDER_VERSION", "test-next")
    assert image.image_digest("small") != after_init


def test_digest_ignores_other_recipes_and_mtimes(images_dir: Path) -> None:
    directory = write_recipe(images_dir, "small")
    base = image.image_digest("small")
    write_recipe(images_dir, "other")
    motd = directory / "files" / "etc" / "motd"
    motd.write_text(motd.read_text())
    assert image.image_digest("small") == base


def test_digest_covers_probe_sources(images_dir: Path) -> None:
    src = images_dir.parent / "workloads" / "src"
    src.mkdir(parents=True)
    write_recipe(images_dir, "probed", MINIMAL + "probes:\n  sources: ../../workloads/src\n")
    empty = image.image_digest("probed")
    (src / "probe.c").write_text("int main(void) { return 0; }\n")
    with_probe = image.image_digest("probed")
    assert with_probe != empty
    (src / "notes.txt").write_text("not a source\n")
    assert image.image_digest("probed") == with_probe
    probes = image.load_recipe("probed").probes
    assert probes is not None and probes.sources == src.resolve()
    assert probes.destination == "/usr/local/bin"


# --------------------------------------------------------------------------- cache lookup


def test_cached_image_needs_a_complete_entry(images_dir: Path, tmp_path: Path) -> None:
    write_recipe(images_dir, "small")
    assert image.cached_image("small") is None
    digest = image.image_digest("small")
    entry = tmp_path / "home" / "images" / f"small-{digest[:12]}"
    entry.mkdir(parents=True)
    for name in ("rootfs.qcow2", "vmlinux", "initrd.img"):
        (entry / name).write_bytes(b"x")
    manifest = {"recipe": "small", "digest": digest, "rootfs": "rootfs.qcow2", "kernel": "vmlinux",
                "initrd": "initrd.img", "cmdline": "root=/dev/vda console=ttyS0"}
    (entry / "image.json").write_text(json.dumps(manifest))
    found = image.cached_image("small")
    assert found == image.GuestImage(recipe="small", digest=digest, directory=entry,
                                     rootfs=entry / "rootfs.qcow2", kernel=entry / "vmlinux",
                                     initrd=entry / "initrd.img", cmdline="root=/dev/vda console=ttyS0")
    assert image.build_image("small") == found  # cached: no mmdebstrap
    (entry / "initrd.img").unlink()
    assert image.cached_image("small") is None


# --------------------------------------------------------------------------- initrd pieces

MODULES_DEP = """\
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko \
kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko
kernel/lib/crc16.ko:
kernel/fs/mbcache.ko:
kernel/fs/jbd2/jbd2.ko:
kernel/drivers/firmware/qemu_fw_cfg.ko:
"""


def test_modules_resolve_in_dependency_order() -> None:
    order = image.resolve_modules(MODULES_DEP, "kernel/crypto/crc32c_generic.ko\n",
                                  ("virtio-pci", "virtio_blk", "crc32c_generic", "ext4"))
    names = [Path(p).name for p in order]
    assert names == ["virtio_ring.ko", "virtio.ko", "virtio_pci_modern_dev.ko", "virtio_pci_legacy_dev.ko",
                     "virtio_pci.ko", "virtio_blk.ko", "jbd2.ko", "mbcache.ko", "crc16.ko", "ext4.ko"]
    for i, path in enumerate(order):  # each module after all it depends on
        deps = [line for line in MODULES_DEP.replace("\\\n", "").splitlines() if line.startswith(path + ":")]
        for dep in deps[0].split(":", 1)[1].split():
            assert order.index(dep) < i


def test_unknown_module_is_an_image_error() -> None:
    with pytest.raises(ImageError, match="'virtio_scsi'"):
        image.resolve_modules(MODULES_DEP, "", ("virtio_scsi",))


def test_cpio_records_are_newc_and_aligned() -> None:
    record = image._cpio_entry("init", 0o100755, b"abc", ino=7)
    assert record.startswith(b"070701")
    assert len(record) % 4 == 0
    assert int(record[6:14], 16) == 7            # c_ino
    assert int(record[14:22], 16) == 0o100755    # c_mode
    assert int(record[54:62], 16) == 3           # c_filesize
    assert int(record[94:102], 16) == len("init") + 1  # c_namesize
    assert record[110:115] == b"init\0"


def fake_elf(pvh: bool) -> bytes:
    """A minimal ELF64 with one PT_NOTE segment holding a Xen note."""
    note_type = 18 if pvh else 6
    note = struct.pack("<III", 4, 4, note_type) + b"Xen\0" + b"\0\0\0\0"
    phoff = 64
    header = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    header += struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0, phoff, 0, 0, 64, 56, 1, 0, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 4, 0, phoff + 56, 0, 0, len(note), len(note), 4)
    return header + phdr + note


@pytest.mark.parametrize("compress", [lambda d: lzma.compress(d, format=lzma.FORMAT_XZ), gzip.compress])
def test_extract_vmlinux_finds_the_pvh_elf(compress) -> None:  # type: ignore[no-untyped-def]
    elf = fake_elf(pvh=True)
    bzimage = b"MZ setup code" + bytes(100) + compress(elf) + b"trailer"
    assert image.extract_vmlinux(bzimage) == elf


def test_extract_vmlinux_refuses_a_kernel_without_pvh() -> None:
    bzimage = b"MZ" + lzma.compress(fake_elf(pvh=False), format=lzma.FORMAT_XZ)
    with pytest.raises(ImageError) as err:
        image.extract_vmlinux(bzimage)
    assert "uncompressed: false" in (err.value.hint or "")


# --------------------------------------------------------------------------- host compiler steps

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")


@needs_gcc
def test_probes_compile_one_program_per_source(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "hello.c").write_text('#include <stdio.h>\nint main(void) { puts("probe ok"); return 0; }\n')
    (src / "README").write_text("not compiled\n")
    probes = image.Probes(sources=src, destination="/usr/local/bin", cflags=("-O2", "-Wall"), ldflags=())
    root = tmp_path / "root"
    image._compile_probes(probes, root)
    program = root / "usr/local/bin/hello"
    assert sorted(p.name for p in program.parent.iterdir()) == ["hello"]
    assert program.stat().st_mode & 0o777 == 0o755
    assert subprocess.run([program], capture_output=True, text=True).stdout == "probe ok\n"


@needs_gcc
def test_broken_probe_is_a_command_error_naming_it(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "bad.c").write_text("int main(void) { return undefined; }\n")
    probes = image.Probes(sources=src, destination="/usr/local/bin", cflags=("-O2",), ldflags=())
    with pytest.raises(CommandError) as err:
        image._compile_probes(probes, tmp_path / "root")
    assert "bad.c" in (err.value.hint or "")


@needs_gcc
def test_initrd_init_builds_static_without_warnings(tmp_path: Path) -> None:
    init = tmp_path / "init"
    source = Path(image.__file__).resolve().parent.parent / "images" / "initrd" / "init.c"
    subprocess.run(["gcc", "-static", "-Os", "-s", "-Wall", "-Wextra", "-Werror", "-o", init, source],
                   check=True, capture_output=True)
    assert init.read_bytes()[:4] == b"\x7fELF"


def test_prune_keeps_current_and_in_use(ddc_home: Path) -> None:
    from orchestrator import image as img
    from orchestrator import paths

    root = paths.image_cache()
    current = root / f"debian-bookworm-{img.image_digest('debian-bookworm')[:12]}"
    old, used, foreign = root / "debian-bookworm-000000000000", root / "debian-bookworm-111111111111", root / "x"
    for entry in (current, old, used):
        entry.mkdir(parents=True)
        (entry / img.MANIFEST).write_text("{}")
    foreign.mkdir()
    assert img.prune_images({used}) == [old]
    assert current.is_dir() and used.is_dir() and foreign.is_dir() and not old.exists()
