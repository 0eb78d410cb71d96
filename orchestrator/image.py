"""Guest images: recipes in ``images/<recipe>/`` -> cached, bootable images.

A recipe is data (``recipe.yaml`` plus a ``files/`` tree): Debian packages,
units to enable or mask, kernel command line, initrd modules, and the project's
C probes to compile in.  :func:`build_image` turns it into::

    image_cache()/<recipe>-<digest12>/
        rootfs.qcow2    ext4 of the whole disk (/dev/vda, no partition table)
        vmlinux         the guest kernel, uncompressed, for direct (PVH) kernel boot
        initrd.img      a tiny initrd (images/initrd/init.c + a few modules)
        image.json      manifest: recipe, digest, kernel command line, timings

The digest hashes everything that goes into the image and that we control
(the recipe directory, the initrd sources, the probe sources and
:data:`BUILDER_VERSION`), so an unchanged recipe is found in the cache without
building.  Packages come from the mirror at build time and are not hashed:
rebuild with ``force=True`` to pick up Debian updates.

Build phases, each announced through ``progress``: bootstrap (one mmdebstrap
run, one apt transaction), customize, probes, initrd, rootfs, finish.  A build
happens in a temporary directory next to the cache entry and is renamed into
place only when complete, so an interrupted build leaves no half image.
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import json
import logging
import lzma
import os
import re
import shutil
import stat
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import paths
from .errors import DdcError, ImageError
from .runner import run

LOG = logging.getLogger(__name__)

#: Bump whenever a change here changes what a build produces from the same recipe.
BUILDER_VERSION = "1"

MANIFEST = "image.json"
ROOTFS = "rootfs.qcow2"
KERNEL = "vmlinux"
KERNEL_COMPRESSED = "vmlinuz"
INITRD = "initrd.img"

#: The builder makes the whole disk one ext4 file system, so the root is fixed.
BASE_CMDLINE = ("root=/dev/vda", "rootfstype=ext4", "rw", "console=ttyS0")

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
# Unit names as systemctl accepts them, templates included (getty@.service).
_UNIT_RE = re.compile(r"^[A-Za-z0-9:_.\\@-]+\.(service|socket|target|timer|mount|path|slice|automount)$")
_MODULE_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_SIZE_RE = re.compile(r"^([1-9][0-9]*)([MG])$")
_HOSTNAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")

Progress = Callable[[str], None]


def images_dir() -> Path:
    """The recipes: ``images/`` of this checkout, or ``DDC_IMAGES_DIR``."""
    override = os.environ.get("DDC_IMAGES_DIR")
    if override:
        return Path(override)
    return Path(__file__).resolve().parent.parent / "images"


@dataclass(frozen=True)
class GuestImage:
    recipe: str
    digest: str
    directory: Path
    rootfs: Path        # qcow2 base (blades boot copy-on-write overlays of it)
    kernel: Path
    initrd: Path | None
    cmdline: str        # full kernel command line, including root=/dev/vda and console=ttyS0


@dataclass(frozen=True)
class Probes:
    """C sources compiled on the host into the image, one program per ``*.c``."""

    sources: Path               # directory; may be missing or empty
    destination: str            # absolute path inside the guest
    cflags: tuple[str, ...]
    ldflags: tuple[str, ...]


@dataclass(frozen=True)
class Recipe:
    name: str
    directory: Path
    suite: str
    sources: tuple[str, ...]            # apt one-line sources ("deb URI SUITE COMPONENTS")
    packages: tuple[str, ...]
    exclude_paths: tuple[str, ...]      # dpkg path-exclude globs (docs, man pages, ...)
    include_paths: tuple[str, ...]      # dpkg path-include globs, re-including under excludes
    remove: tuple[str, ...]             # globs deleted from the tree after install
    enable: tuple[str, ...]
    disable: tuple[str, ...]            # installed but not started at boot
    mask: tuple[str, ...]
    cmdline: tuple[str, ...]            # appended to BASE_CMDLINE
    initrd_modules: tuple[str, ...]     # loaded by images/initrd/init.c, deps resolved
    uncompressed_kernel: bool           # boot the ELF vmlinux through its PVH entry
    rootfs_size: str                    # e.g. "4G": the file system size the guest sees
    hostname: str                       # default, until fw_cfg says otherwise
    probes: Probes | None

    @property
    def files(self) -> Path:
        return self.directory / "files"


# --------------------------------------------------------------------------- recipes


def recipe_names() -> list[str]:
    """The recipes available, sorted: directories of images/ with a recipe.yaml."""
    root = images_dir()
    if not root.is_dir():
        return []
    return sorted(p.parent.name for p in root.glob("*/recipe.yaml") if _NAME_RE.match(p.parent.name))


def _check_name(recipe: str) -> Path:
    if not isinstance(recipe, str) or not _NAME_RE.match(recipe) or ".." in recipe:
        raise ImageError(f"invalid image recipe name {recipe!r}",
                         hint="use a directory name of images/ made of a-z, 0-9, '.', '_', '-' "
                              f"(known: {', '.join(recipe_names()) or 'none'})")
    directory = images_dir() / recipe
    if not (directory / "recipe.yaml").is_file():
        raise ImageError(f"unknown image recipe {recipe!r}: no {directory / 'recipe.yaml'}",
                         hint=f"pick one of: {', '.join(recipe_names()) or 'none (images/ is empty)'}")
    return directory


class _Fields:
    """Typed access to one YAML mapping; every error names the file, the key path and the fix."""

    def __init__(self, data: Any, where: str, prefix: str = "") -> None:
        if not isinstance(data, dict):
            raise ImageError(f"{where}: {prefix.rstrip('.') or 'the file'} must be a mapping, "
                             f"got {type(data).__name__}", hint="write 'key: value' lines")
        self.data = data
        self.where = where
        self.prefix = prefix
        self.used: set[str] = set()

    def _get(self, key: str, default: Any) -> Any:
        self.used.add(key)
        return self.data.get(key, default)

    def fail(self, key: str, problem: str, hint: str) -> ImageError:
        return ImageError(f"{self.where}: '{self.prefix}{key}' {problem}", hint=hint)

    def string(self, key: str, default: str | None = None, pattern: re.Pattern[str] | None = None,
               what: str = "a non-empty string") -> str:
        value = self._get(key, default)
        if not isinstance(value, str) or not value or (pattern and not pattern.match(value)):
            raise self.fail(key, f"= {value!r} is not {what}", f"set '{key}:' in the recipe to {what}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self._get(key, default)
        if not isinstance(value, bool):
            raise self.fail(key, f"= {value!r} is not true or false", f"write '{key}: true' or 'false'")
        return value

    def strings(self, key: str, pattern: re.Pattern[str] | None = None,
                what: str = "a string") -> tuple[str, ...]:
        value = self._get(key, [])
        if not isinstance(value, list):
            raise self.fail(key, f"must be a list, got {value!r}",
                            f"write '{key}: [a, b]' or one '- item' per line")
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item or (pattern and not pattern.match(item)):
                raise self.fail(f"{key}[{i}]", f"= {item!r} is not {what}", f"fix or remove item {i} of '{key}'")
        return tuple(value)

    def mapping(self, key: str) -> _Fields | None:
        value = self._get(key, None)
        return None if value is None else _Fields(value, self.where, f"{self.prefix}{key}.")

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            where = f" under '{self.prefix.rstrip('.')}'" if self.prefix else ""
            raise ImageError(f"{self.where}: unknown key(s){where}: {', '.join(map(repr, unknown))}",
                             hint=f"valid keys here: {', '.join(sorted(self.used))}")


def load_recipe(recipe: str) -> Recipe:
    """Parse and validate ``images/<recipe>/recipe.yaml``; raise ImageError if it is wrong."""
    directory = _check_name(recipe)
    where = f"images/{recipe}/recipe.yaml"
    try:
        data = yaml.safe_load((directory / "recipe.yaml").read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ImageError(f"{where}: cannot read: {exc}", hint="fix the YAML syntax") from exc
    top = _Fields(data, where)
    if "description" in top.data:
        top.string("description")
    suite = top.string("suite", what="a Debian suite like bookworm")
    sources = top.strings("sources", re.compile(r"^deb \S+ \S+( \S+)+$"),
                          "an apt source line like 'deb http://deb.debian.org/debian bookworm main'")
    if not sources:
        raise ImageError(f"{where}: 'sources' is empty",
                         hint="list at least 'deb http://deb.debian.org/debian <suite> main'")
    packages = top.strings("packages", re.compile(r"^[a-z0-9][a-z0-9+.-]+$"), "a Debian package name")
    if not packages:
        raise ImageError(f"{where}: 'packages' is empty", hint="list the Debian packages to install")
    exclude_paths = top.strings("exclude_paths", re.compile(r"^/"), "an absolute path glob")
    include_paths = top.strings("include_paths", re.compile(r"^/"), "an absolute path glob")
    remove = top.strings("remove", re.compile(r"^/(?!.*\.\.)"), "an absolute path glob without '..'")
    units = top.mapping("units")
    enable: tuple[str, ...] = ()
    disable: tuple[str, ...] = ()
    mask: tuple[str, ...] = ()
    if units is not None:
        what = "a systemd unit name like 'ssh.service'"
        enable = units.strings("enable", _UNIT_RE, what)
        disable = units.strings("disable", _UNIT_RE, what)
        mask = units.strings("mask", _UNIT_RE, what)
        units.finish()
    kernel = top.mapping("kernel")
    cmdline: tuple[str, ...] = ()
    modules: tuple[str, ...] = ()
    uncompressed = True
    if kernel is not None:
        cmdline = kernel.strings("cmdline", re.compile(r"^\S+$"), "one kernel parameter without spaces")
        modules = kernel.strings("initrd_modules", _MODULE_RE, "a kernel module name")
        uncompressed = kernel.boolean("uncompressed", True)
        kernel.finish()
    for param in cmdline:
        if param.split("=", 1)[0] in ("root", "rootfstype", "console"):
            raise ImageError(f"{where}: 'kernel.cmdline' sets {param!r}, which the builder owns",
                             hint=f"remove it; every image boots with {' '.join(BASE_CMDLINE)}")
    rootfs_size = top.string("rootfs_size", "4G", _SIZE_RE, "a size like 2G or 1500M")
    hostname = top.string("hostname", "ddc-blade", _HOSTNAME_RE, "a hostname like ddc-blade")
    if "workloads" in top.data:
        workloads = top.string("workloads", what="a directory of workload YAML files, relative to the recipe")
        # Each workload names the packages it needs; the image has them all.
        from .workload import all_packages

        try:
            wanted = all_packages((directory / workloads).resolve())
        except DdcError as exc:
            raise ImageError(f"{where}: workloads: {exc.message}", hint=exc.hint) from exc
        packages += tuple(p for p in wanted if p not in packages)
    probes_fields = top.mapping("probes")
    probes = None
    if probes_fields is not None:
        src = probes_fields.string("sources", what="a directory relative to the recipe")
        dest = probes_fields.string("destination", "/usr/local/bin", re.compile(r"^/(?!.*\.\.)"),
                                    "an absolute guest path like /usr/local/bin")
        probes = Probes(sources=(directory / src).resolve(), destination=dest,
                        cflags=probes_fields.strings("cflags") or ("-O2", "-Wall", "-pthread"),
                        ldflags=probes_fields.strings("ldflags") or ("-lm",))
        probes_fields.finish()
    top.finish()
    return Recipe(name=recipe, directory=directory, suite=suite, sources=sources, packages=packages,
                  exclude_paths=exclude_paths, include_paths=include_paths, remove=remove,
                  enable=enable, disable=disable, mask=mask, cmdline=cmdline, initrd_modules=modules,
                  uncompressed_kernel=uncompressed,
                  rootfs_size=rootfs_size, hostname=hostname, probes=probes)


def kernel_cmdline(recipe: Recipe) -> str:
    return " ".join(BASE_CMDLINE + recipe.cmdline)


# --------------------------------------------------------------------------- digest


def _hash_tree(h: Any, label: str, root: Path, suffixes: tuple[str, ...] | None = None) -> None:
    """Feed names, kinds, exec bits and contents of a tree into ``h``, in a stable order."""
    h.update(f"tree {label}\0".encode())
    if not root.is_dir():
        return
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if "__pycache__" in rel:
            continue
        if suffixes is not None and path.suffix not in suffixes:
            continue
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            h.update(f"L {rel}\0{os.readlink(path)}\0".encode())
        elif stat.S_ISDIR(st.st_mode):
            h.update(f"D {rel}\0".encode())
        elif stat.S_ISREG(st.st_mode):
            # Only the exec bit matters: the builder sets everything else itself.
            h.update(f"F {rel} {bool(st.st_mode & 0o111)} {st.st_size}\0".encode())
            h.update(path.read_bytes())


def image_digest(recipe: str) -> str:
    """The 64-hex digest of everything we control that goes into ``recipe``'s image."""
    parsed = load_recipe(recipe)
    h = hashlib.sha256(f"ddc-image builder={BUILDER_VERSION}\0".encode())
    _hash_tree(h, "recipe", parsed.directory)
    _hash_tree(h, "initrd", images_dir() / "initrd")
    h.update(("packages " + " ".join(sorted(parsed.packages)) + "\0").encode())
    if parsed.probes is not None:
        _hash_tree(h, "probes", parsed.probes.sources, (".c", ".h"))
    return h.hexdigest()


def _entry(recipe: str, digest: str) -> Path:
    return paths.image_cache() / f"{recipe}-{digest[:12]}"


def image_at(directory: Path) -> GuestImage | None:
    """The image built in ``directory`` (a cache entry), or None if it is absent or incomplete."""
    try:
        data = json.loads((directory / MANIFEST).read_text())
        image = GuestImage(
            recipe=data["recipe"], digest=data["digest"], directory=directory,
            rootfs=directory / data["rootfs"], kernel=directory / data["kernel"],
            initrd=directory / data["initrd"] if data.get("initrd") else None,
            cmdline=data["cmdline"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    files = [image.rootfs, image.kernel] + ([image.initrd] if image.initrd else [])
    return image if all(f.is_file() for f in files) else None


def cached_image(recipe: str) -> GuestImage | None:
    """The built image of ``recipe`` as it is now, or None if it must be built."""
    digest = image_digest(recipe)
    image = image_at(_entry(recipe, digest))
    if image is not None and image.digest != digest:
        return None
    return image


def prune_images(in_use: set[Path]) -> list[Path]:
    """Remove cache entries that are no recipe's current image and that no
    testbed boots from (``in_use``: their directories); return what went."""
    current = {_entry(name, image_digest(name)) for name in recipe_names()}
    removed = []
    root = paths.image_cache()
    for entry in sorted(root.iterdir()) if root.is_dir() else []:
        if entry.name.startswith(".") or not entry.is_dir() or entry in current or entry in in_use:
            continue
        if image_at(entry) is None and not (entry / MANIFEST).exists():
            continue  # not an image of ours
        _remove_tree(entry)
        removed.append(entry)
    return removed


# --------------------------------------------------------------------------- build


def build_image(recipe: str, *, force: bool = False, progress: Progress | None = None) -> GuestImage:
    """Return ``recipe``'s image, building it unless an up-to-date one is cached.

    ``force`` rebuilds even so and replaces the cache entry in place: overlays of
    running blades name the base image by path, so stop them first.
    """
    say = progress or (lambda message: None)
    digest = image_digest(recipe)
    if not force:
        image = cached_image(recipe)
        if image is not None:
            say(f"image {recipe} is cached: {image.directory}")
            return image
    parsed = load_recipe(recipe)
    cache = paths.image_cache()
    try:
        # libvirt-qemu must traverse to the images: directories we create are 0755
        # whatever the caller's umask.
        created = [p for p in (cache, *cache.parents) if not p.exists()]
        cache.mkdir(parents=True, exist_ok=True)
        for directory in created:
            directory.chmod(0o755)
    except OSError as exc:
        raise ImageError(f"cannot create the image cache {cache}: {exc}",
                         hint="run as root, or set DDC_HOME to a writable directory") from exc
    with _locked(cache / f".{recipe}.lock"):
        if not force:   # another process may have built it while we waited for the lock
            image = cached_image(recipe)
            if image is not None:
                return image
        final = _entry(recipe, digest)
        work = cache / f".build-{final.name}-{os.getpid()}"
        _remove_tree(work)
        work.mkdir(mode=0o700)
        try:
            image = _build(parsed, digest, work, say)
            out = work / "out"
            out.chmod(0o755)
            trash = cache / f".old-{final.name}-{os.getpid()}"
            if final.exists():
                final.rename(trash)
            # The one step that publishes the image: atomic on one file system.
            out.rename(final)
            _remove_tree(trash)
        finally:
            _remove_tree(work)
    image = image_at(final)
    if image is None:
        raise ImageError(f"the image just built in {final} is incomplete", hint="rebuild with force")
    say(f"image {recipe} ready: {final}")
    return image


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    found = []
    with open("/proc/self/mounts") as fh:
        for line in fh:
            point = line.split()[1].replace("\\040", " ")
            if (point + "/").startswith(prefix):
                found.append(point)
    return found


def _remove_tree(path: Path) -> None:
    """rmtree that never descends into a mount (an interrupted chroot's /dev, /proc)."""
    if not path.exists():
        return
    for point in sorted(_mounts_under(path), key=len, reverse=True):
        run(["umount", "--lazy", point], check=False)
    if _mounts_under(path):
        raise ImageError(f"{path} still has mounts; refusing to delete it",
                         hint=f"unmount what is under {path} and delete it by hand")
    shutil.rmtree(path)


def _build(recipe: Recipe, digest: str, work: Path, say: Progress) -> GuestImage:
    root = work / "root"
    out = work / "out"
    out.mkdir()
    timings: dict[str, float] = {}

    def phase(name: str, message: str) -> None:
        timings[name] = time.monotonic()
        say(message)
        LOG.info("%s: %s", recipe.name, message)

    phase("bootstrap", f"bootstrap: mmdebstrap {recipe.suite} with {len(recipe.packages)} packages")
    _bootstrap(recipe, root)
    phase("customize", "customize: files, units, host keys")
    _customize(recipe, root)
    if recipe.probes is not None:
        phase("probes", f"probes: compiling {recipe.probes.sources}")
        _compile_probes(recipe.probes, root)
    phase("initrd", "initrd: kernel, init and modules")
    kernel_version = _kernel_version(root)
    bzimage = root / "boot" / f"vmlinuz-{kernel_version}"
    if recipe.uncompressed_kernel:
        kernel_name = KERNEL
        (out / KERNEL).write_bytes(extract_vmlinux(bzimage.read_bytes()))
    else:
        kernel_name = KERNEL_COMPRESSED
        shutil.copyfile(bzimage, out / KERNEL_COMPRESSED)
    modules = _write_initrd(recipe, root, kernel_version, work, out / INITRD)
    phase("rootfs", f"rootfs: mkfs.ext4 ({recipe.rootfs_size}) and qcow2")
    _make_rootfs(recipe, root, work / "rootfs.raw", out / ROOTFS)
    phase("finish", "finish: manifest")
    start = min(timings.values())
    manifest = {
        "recipe": recipe.name, "digest": digest, "builder": BUILDER_VERSION,
        "rootfs": ROOTFS, "kernel": kernel_name, "initrd": INITRD,
        "cmdline": kernel_cmdline(recipe), "kernel_version": kernel_version,
        "initrd_modules": modules, "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "build_seconds": round(time.monotonic() - start, 1),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    for path in out.iterdir():
        # libvirtd runs QEMU as libvirt-qemu, which must open base image, kernel and initrd.
        path.chmod(0o644)
    image = image_at(out)
    assert image is not None
    return image


def _bootstrap(recipe: Recipe, root: Path) -> None:
    """One mmdebstrap run: essential + apt + the recipe's packages in one apt transaction."""
    debs = paths.image_cache() / ".debs"
    debs.mkdir(exist_ok=True)
    argv: list[str | Path] = [
        "mmdebstrap", "--mode=root", "--variant=apt", "--format=directory",
        # dpkg inside eatmydata: no fsync per file, the biggest win after the download.
        "--hook-dir=/usr/share/mmdebstrap/hooks/eatmydata",
        "--include=" + ",".join(recipe.packages),
        # Downloaded .debs survive between builds, so a forced rebuild does not fetch them again.
        '--setup-hook=mkdir -p "$1"/var/cache/apt/archives',
        f"--setup-hook=sync-in {debs} /var/cache/apt/archives/",
        f"--customize-hook=sync-out /var/cache/apt/archives {debs}",
        # The image boots with its own initrd (images/initrd), so the kernel's postinst
        # need not build Debian's (tens of MB, a fifth of the bootstrap): divert
        # update-initramfs to a no-op before any package is configured.
        "--essential-hook=chroot \"$1\" dpkg-divert --quiet --local --rename --add /usr/sbin/update-initramfs"
        " && ln -s /bin/true \"$1\"/usr/sbin/update-initramfs",
    ]
    argv += [f"--dpkgopt=path-exclude={glob_}" for glob_ in recipe.exclude_paths]
    argv += [f"--dpkgopt=path-include={glob_}" for glob_ in recipe.include_paths]
    argv += [recipe.suite, root, *recipe.sources]
    run(argv, hint="check that deb.debian.org is reachable and the recipe's package names exist")
    # Keep the cache to what the current package set needs.
    installed = {p.name for p in (root / "var/cache/apt/archives").glob("*.deb")}
    for old in debs.glob("*.deb"):
        if installed and old.name not in installed:
            old.unlink()


def _copy_files(src: Path, root: Path) -> None:
    """Install the recipe's files/ tree: owned by root, modes from the source but world-readable."""
    if not src.is_dir():
        return
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        dest = root / rel
        if path.is_symlink():
            if dest.is_symlink() or dest.exists():
                dest.unlink()
            dest.symlink_to(os.readlink(path))
        elif path.is_dir():
            dest.mkdir(exist_ok=True)
        else:
            if dest.is_symlink():
                dest.unlink()
            shutil.copyfile(path, dest)
            dest.chmod(0o755 if path.stat().st_mode & 0o111 else 0o644)
        os.lchown(dest, 0, 0)


def _customize(recipe: Recipe, root: Path) -> None:
    _copy_files(recipe.files, root)
    for pattern in recipe.remove:
        for found in glob.glob(str(root) + pattern):
            path = Path(found)
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    (root / "etc/hostname").write_text(recipe.hostname + "\n")
    # Empty, not absent: systemd then makes a fresh id at every boot (each blade its own)
    # without treating the boot as a first boot.
    (root / "etc/machine-id").write_text("")
    if recipe.mask:
        run(["systemctl", f"--root={root}", "mask", *recipe.mask])
    if recipe.disable:
        run(["systemctl", f"--root={root}", "disable", *recipe.disable])
    if recipe.enable:
        run(["systemctl", f"--root={root}", "enable", *recipe.enable])


def _compile_probes(probes: Probes, root: Path) -> None:
    """Compile each ``*.c`` of the probe directory into one guest program (host gcc = guest's)."""
    sources = sorted(probes.sources.glob("*.c")) if probes.sources.is_dir() else []
    dest = root / probes.destination.lstrip("/")
    dest.mkdir(parents=True, exist_ok=True)
    for source in sources:
        target = dest / source.stem
        run(["gcc", *probes.cflags, "-o", target, source, *probes.ldflags],
            hint=f"fix the probe {source.name}; it must build with gcc {' '.join(probes.cflags)}")
        target.chmod(0o755)


def _kernel_version(root: Path) -> str:
    versions = sorted(p.name for p in (root / "lib/modules").iterdir() if p.is_dir())
    if len(versions) != 1:
        raise ImageError(f"expected one kernel in the image, found {versions or 'none'}",
                         hint="install exactly one linux-image package")
    return versions[0]


def resolve_modules(modules_dep: str, builtin: str, wanted: tuple[str, ...]) -> list[str]:
    """Paths (relative to /lib/modules/<version>) of ``wanted`` and their dependencies, in load order.

    ``modules_dep`` and ``builtin`` are the texts of modules.dep and modules.builtin.
    Names compare with '-' and '_' as equal, as modprobe does.
    """
    def norm(name: str) -> str:
        return name.replace("-", "_")

    deps: dict[str, tuple[str, list[str]]] = {}
    for line in modules_dep.splitlines():
        if ":" not in line:
            continue
        path, rest = line.split(":", 1)
        name = norm(Path(path).name.split(".ko")[0])
        deps[name] = (path, rest.split())
    builtins = {norm(Path(p).name.split(".ko")[0]) for p in builtin.split()}
    by_path = {path: name for name, (path, _) in deps.items()}
    order: list[str] = []

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in builtins or deps[name][0] in order:
            return
        if name in chain:
            raise ImageError(f"module dependency loop: {' -> '.join(chain + (name,))}")
        # modules.dep lists a module's dependencies nearest first; load the farthest first.
        for dep in reversed(deps[name][1]):
            visit(by_path[dep], chain + (name,))
        order.append(deps[name][0])

    for wanted_name in wanted:
        name = norm(wanted_name)
        if name in builtins:
            continue
        if name not in deps:
            raise ImageError(f"kernel module {wanted_name!r} (kernel.initrd_modules) is not in this kernel",
                             hint="remove it from the recipe or fix its name (see modules.dep)")
        visit(name, ())
    return order


# Payload magics of the compressions a Debian bzImage may use, and how to undo them.
_XZ_MAGIC = b"\xfd7zXZ\x00"
_GZIP_MAGIC = b"\x1f\x8b\x08"
_PVH_NOTE = 18  # XEN_ELFNOTE_PHYS32_ENTRY: the 32-bit entry point QEMU uses for PVH boot


def extract_vmlinux(bzimage: bytes) -> bytes:
    """The ELF kernel inside a bzImage.

    Under TCG, decompressing the xz payload of Debian's bzImage takes the guest
    about 3 s; QEMU boots the ELF itself through its PVH entry note, which also
    skips the real-mode setup code.
    """
    candidates: list[tuple[int, Callable[[bytes], bytes]]] = []
    start = bzimage.find(_XZ_MAGIC)
    if start >= 0:
        candidates.append((start, lambda data: lzma.LZMADecompressor(lzma.FORMAT_XZ).decompress(data)))
    start = bzimage.find(_GZIP_MAGIC)
    if start >= 0:
        candidates.append((start, _gunzip_prefix))
    for start, decompress in sorted(candidates, key=lambda c: c[0]):
        try:
            elf = decompress(bzimage[start:])
        except (lzma.LZMAError, OSError, EOFError, zlib.error):
            continue
        if elf[:4] == b"\x7fELF" and _has_pvh_note(elf):
            return elf
    raise ImageError("cannot extract a PVH-bootable ELF kernel from the bzImage "
                     "(xz and gzip payloads are supported; the kernel needs CONFIG_PVH=y)",
                     hint="set 'kernel: {uncompressed: false}' in the recipe to boot the bzImage")


def _gunzip_prefix(data: bytes) -> bytes:
    # A decompressobj stops at the end of the gzip member and ignores what follows.
    return zlib.decompressobj(wbits=31).decompress(data)


def _has_pvh_note(elf: bytes) -> bool:
    """True if a PT_NOTE segment of this ELF64 has a Xen note of type PHYS32_ENTRY."""
    if elf[4] != 2 or elf[5] != 1:  # ELFCLASS64, little endian
        return False
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        p_type, _, p_offset, _, _, p_filesz = struct.unpack_from("<IIQQQQ", elf, phoff + i * phentsize)
        if p_type != 4:  # PT_NOTE
            continue
        pos, end = p_offset, p_offset + p_filesz
        while pos + 12 <= end:
            namesz, descsz, note_type = struct.unpack_from("<III", elf, pos)
            name = elf[pos + 12:pos + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and note_type == _PVH_NOTE:
                return True
            pos += 12 + ((namesz + 3) & ~3) + ((descsz + 3) & ~3)
    return False


def _cpio_entry(name: str, mode: int, data: bytes = b"", ino: int = 0) -> bytes:
    """One record of the kernel's initramfs format ("newc" cpio, see the kernel's
    Documentation/driver-api/early-userspace/buffer-format.rst)."""
    encoded = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
    header = b"070701" + b"".join(b"%08X" % f for f in fields)
    record = header + encoded
    record += b"\0" * (-len(record) % 4)
    record += data
    record += b"\0" * (-len(record) % 4)
    return record


def _write_initrd(recipe: Recipe, root: Path, version: str, work: Path, dest: Path) -> list[str]:
    source = images_dir() / "initrd" / "init.c"
    init = work / "init"
    # Static: the initrd holds no libc.  Host gcc and libc are Debian's, like the guest's.
    run(["gcc", "-static", "-Os", "-s", "-Wall", "-Wextra", "-Werror", "-o", init, source],
        hint="install gcc and libc6-dev on the host")
    moddir = root / "lib/modules" / version
    builtin = moddir / "modules.builtin"
    modules = resolve_modules((moddir / "modules.dep").read_text(),
                              builtin.read_text() if builtin.exists() else "", recipe.initrd_modules)
    entries = [("dev", 0o040755, b""), ("proc", 0o040755, b""), ("root", 0o040755, b""),
               ("modules", 0o040755, b""), ("init", 0o100755, init.read_bytes())]
    for i, rel in enumerate(modules):
        # init.c loads in file-name order: the index prefix is the dependency order.
        entries.append((f"modules/{i:03d}-{Path(rel).name}", 0o100644, (moddir / rel).read_bytes()))
    blob = b"".join(_cpio_entry(name, mode, data, ino) for ino, (name, mode, data)
                    in enumerate(entries, start=1))
    blob += _cpio_entry("TRAILER!!!", 0)
    # Uncompressed on purpose: a few MB that QEMU copies in directly; unpacking
    # zstd or gzip in a TCG guest costs more than it saves.
    dest.write_bytes(blob)
    return [Path(m).name for m in modules]


def _make_rootfs(recipe: Recipe, root: Path, raw: Path, dest: Path) -> None:
    run(["mkfs.ext4", "-q", "-F", "-L", "ddc-root", "-d", root,
         # Initialize inode tables and journal now; lazy init would be done by a
         # kernel thread in every booting guest, stealing CPU from the boot.
         "-E", "lazy_itable_init=0,lazy_journal_init=0", raw, recipe.rootfs_size],
        hint="install e2fsprogs (mkfs.ext4 -d needs version 1.43 or later)")
    run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, dest], hint="install qemu-utils")
    raw.unlink()
