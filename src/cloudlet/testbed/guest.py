"""A tiny real guest for the qemu driver's tests: Debian's kernel, busybox, an ext4 root.

Built from host packages (linux-image-amd64, busybox-static, e2fsprogs) into a cache
directory named by the digest of everything that goes in, so later runs reuse it::

    image = build_guest(Path("~/.cache/cloudlet/guest").expanduser())
    spec = WorkloadSpec("web", port=8080, guest_port=image.guest_port, disk_image=image.disk,
                        env=image.vm_env())

The initramfs loads the virtio and ext4 modules (Debian builds them as modules), mounts
``/dev/vda`` and switch_root's into it. The root's busybox init brings up eth0 as
10.0.2.15 (QEMU user networking), writes a random token (a fresh uuid) to ``/run/www/token`` (tmpfs:
it lives in guest RAM only, so a reboot makes a new one), serves ``/run/www`` with
busybox httpd on port 80, and powers off on the ACPI power button. The kernel is
stored decompressed when it supports PVH boot, which saves seconds under emulation.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import lzma
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cloudlet.errors import DriverUnavailableError

#: Bump when the layout or the scripts change in a way the digest would not see.
BUILD_VERSION = "2"
GUEST_PORT = 80
PAGE = "hello from the cloudlet test guest\n"
DISK_MIB = 16
#: Modules the guest needs, in load order; each one's dependencies are added first
#: (crc32c_generic is only a soft dependency of ext4, so modules.dep omits it).
MODULES = ("virtio_pci", "virtio_blk", "virtio_net", "crc32c_generic", "ext4", "button", "evdev")

_XZ_MAGIC = b"\xfd7zXZ\x00"
_APT_HINT = "apt-get install -y --no-install-recommends linux-image-amd64 busybox-static e2fsprogs"

_INITRAMFS_INIT = """#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /newroot
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev
exec >/dev/console 2>&1 </dev/console
for m in $(/bin/busybox cat /modules.order); do /bin/busybox insmod "/modules/$m"; done
n=0
while [ ! -b /dev/vda ] && [ $n -lt 100 ]; do /bin/busybox usleep 50000; n=$((n + 1)); done
if ! /bin/busybox mount -t ext4 /dev/vda /newroot; then
    echo "cloudlet-initramfs: cannot mount /dev/vda"; /bin/busybox poweroff -f
fi
/bin/busybox umount /proc /sys
/bin/busybox mount --move /dev /newroot/dev
exec /bin/busybox switch_root /newroot /sbin/init
"""

_INITTAB = """::sysinit:/etc/init.d/rcS
::respawn:/bin/httpd -f -p 80 -h /run/www
::respawn:/bin/acpid -f -c /etc/acpi -l /run/acpid.log
::shutdown:/bin/umount -a -r
"""

_RCS = """#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t tmpfs -o mode=0755 run /run
ip link set lo up
ip addr add 10.0.2.15/24 dev eth0
ip link set eth0 up
ip route add default via 10.0.2.2
mkdir -p /run/www
cp /srv/www/index.html /run/www/index.html
cat /proc/sys/kernel/random/uuid > /run/www/token
echo "cloudlet-guest: ready, token $(cat /run/www/token)"
"""

_POWER_BUTTON = "#!/bin/sh\npoweroff\n"


@dataclass(frozen=True)
class GuestImage:
    """The files of one built guest and how to boot it."""

    kernel: Path
    initrd: Path
    disk: Path
    append: str
    guest_port: int
    page: str

    def vm_env(self) -> dict[str, str]:
        """The ``spec.env`` entries that make the qemu driver boot this kernel directly."""
        return {
            "CLOUDLET_VM_KERNEL": str(self.kernel),
            "CLOUDLET_VM_INITRD": str(self.initrd),
            "CLOUDLET_VM_APPEND": self.append,
        }


def build_guest(cache_dir: Path) -> GuestImage:
    """Build the test guest into ``cache_dir`` (or reuse the one built from the same inputs).

    Raises:
        DriverUnavailableError: the kernel, busybox-static or mkfs.ext4 is missing.
    """
    kernel, modules_dir = _find_kernel()
    busybox = _find_busybox()
    mkfs = shutil.which("mkfs.ext4") or shutil.which("mkfs.ext4", path="/sbin:/usr/sbin")
    if mkfs is None:
        raise DriverUnavailableError(f"mkfs.ext4 is not installed ({_APT_HINT})")
    module_files = _module_files(modules_dir, MODULES)

    digest = hashlib.sha256()
    for part in (BUILD_VERSION, _INITRAMFS_INIT, _INITTAB, _RCS, _POWER_BUTTON, PAGE):
        digest.update(part.encode() + b"\0")
    for path in (kernel, busybox, *module_files):
        digest.update(path.name.encode() + b"\0" + _file_digest(path))
    out = Path(cache_dir) / f"guest-{digest.hexdigest()[:16]}"
    image = GuestImage(
        kernel=out / "kernel",
        initrd=out / "initrd.gz",
        disk=out / "root.ext4",
        append="console=ttyS0 root=/dev/vda rw quiet mitigations=off",
        guest_port=GUEST_PORT,
        page=PAGE,
    )
    if out.is_dir():
        return image

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=out.parent))
    try:
        _write_kernel(kernel, tmp / "kernel")
        (tmp / "initrd.gz").write_bytes(_initramfs(busybox, module_files, modules_dir))
        _root_disk(tmp / "root.ext4", busybox, mkfs)
        try:
            os.rename(tmp, out)
        except OSError:
            if not out.is_dir():  # not a concurrent build that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return image


def with_page(guest: GuestImage, out: Path, page: str) -> Path:
    """A copy of the guest's root disk whose served page says ``page``: an app's
    customized disk, for making an overlay on the guest disk as its base."""
    debugfs = shutil.which("debugfs") or shutil.which("debugfs", path="/usr/sbin:/sbin")
    if debugfs is None:
        raise DriverUnavailableError(f"debugfs is missing: {_APT_HINT}")
    shutil.copyfile(guest.disk, out)
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "index.html"
        source.write_text(page)
        for command in ("rm srv/www/index.html", f"write {source} srv/www/index.html"):
            subprocess.run(
                [debugfs, "-w", "-R", command, str(out)], check=True, capture_output=True
            )
    return out


def _write_kernel(kernel: Path, target: Path) -> None:
    """Copy the kernel, decompressed to its ELF ``vmlinux`` when it supports PVH boot.

    QEMU boots such an ELF directly (PVH entry), skipping the decompressor, which
    takes several seconds under software emulation.
    """
    config = Path("/boot") / kernel.name.replace("vmlinuz-", "config-", 1)
    data = kernel.read_bytes()
    pvh = config.is_file() and "CONFIG_PVH=y" in config.read_text(errors="replace")
    start = data.find(_XZ_MAGIC)
    if pvh and start >= 0:
        with contextlib.suppress(lzma.LZMAError):
            elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data[start:])
            if elf.startswith(b"\x7fELF"):
                target.write_bytes(elf)
                return
    target.write_bytes(data)


def _find_kernel() -> tuple[Path, Path]:
    for kernel in sorted(Path("/boot").glob("vmlinuz-*"), reverse=True):
        modules = Path("/lib/modules") / kernel.name.removeprefix("vmlinuz-")
        if os.access(kernel, os.R_OK) and (modules / "modules.dep").is_file():
            return kernel, modules
    raise DriverUnavailableError(f"no readable /boot/vmlinuz-* with its modules ({_APT_HINT})")


def _find_busybox() -> Path:
    for candidate in ("/bin/busybox", "/usr/bin/busybox"):
        path = Path(candidate)
        if path.is_file() and b"ld-linux" not in path.read_bytes()[:4096]:
            return path
    raise DriverUnavailableError(f"no static busybox ({_APT_HINT})")


def _module_files(modules_dir: Path, names: Iterable[str]) -> list[Path]:
    """The .ko files for ``names`` with their dependencies first, from modules.dep."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (modules_dir / "modules.dep").read_text().splitlines():
        target, _, rest = line.partition(":")
        deps[target] = rest.split()
        name = Path(target).name.split(".ko")[0].replace("-", "_")
        by_name[name] = target
    ordered: list[str] = []

    def add(target: str) -> None:
        if target in ordered:
            return
        # modules.dep lists the full closure, deepest dependency last.
        for dep in reversed(deps.get(target, [])):
            add(dep)
        ordered.append(target)

    for name in names:
        target = by_name.get(name)
        if target is None:
            continue  # built into this kernel
        if not target.endswith(".ko"):
            raise DriverUnavailableError(f"module {target} is compressed; cannot insmod it")
        add(target)
    return [modules_dir / t for t in ordered]


def _file_digest(path: Path) -> bytes:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.digest()


def _initramfs(busybox: Path, modules: list[Path], modules_dir: Path) -> bytes:
    """A gzipped newc cpio: /init, /bin/busybox, /dev/console, /modules/*.ko."""
    archive = _Cpio()
    for d in ("bin", "dev", "proc", "sys", "newroot", "modules"):
        archive.add(d, stat.S_IFDIR | 0o755)
    archive.add("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))
    archive.add("bin/busybox", stat.S_IFREG | 0o755, busybox.read_bytes())
    archive.add("init", stat.S_IFREG | 0o755, _INITRAMFS_INIT.encode())
    names = []
    for path in modules:
        archive.add(f"modules/{path.name}", stat.S_IFREG | 0o644, path.read_bytes())
        names.append(path.name)
    archive.add("modules.order", stat.S_IFREG | 0o644, ("\n".join(names) + "\n").encode())
    return gzip.compress(archive.finish(), compresslevel=1, mtime=0)


class _Cpio:
    """Writes the newc cpio format the kernel unpacks into its initramfs."""

    def __init__(self) -> None:
        self._buf = io.BytesIO()
        self._ino = 1

    def add(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        encoded = name.encode() + b"\0"
        fields = (self._ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
        self._ino += 1
        self._buf.write(b"070701" + b"".join(b"%08X" % f for f in fields))
        self._buf.write(encoded)
        self._pad()
        self._buf.write(data)
        self._pad()

    def finish(self) -> bytes:
        self.add("TRAILER!!!", 0)
        return self._buf.getvalue()

    def _pad(self) -> None:
        self._buf.write(b"\0" * (-self._buf.tell() % 4))


def _root_disk(path: Path, busybox: Path, mkfs: str) -> None:
    """A raw ext4 image holding busybox, its init configuration and the served page."""
    with tempfile.TemporaryDirectory(prefix="cloudlet-guest-root-") as root_str:
        root = Path(root_str)
        for d in ("bin", "sbin", "etc/init.d", "etc/acpi/PWRF", "srv/www", "proc", "sys"):
            (root / d).mkdir(parents=True, exist_ok=True)
        for d in ("dev", "run", "tmp"):
            (root / d).mkdir()
        shutil.copyfile(busybox, root / "bin/busybox")
        (root / "bin/busybox").chmod(0o755)
        applets = subprocess.run(
            [str(busybox), "--list"], capture_output=True, text=True, check=True
        ).stdout.split()
        for applet in applets:
            if applet != "busybox":
                (root / "bin" / applet).symlink_to("busybox")
        (root / "sbin/init").symlink_to("../bin/busybox")
        _write(root / "etc/inittab", _INITTAB, 0o644)
        _write(root / "etc/init.d/rcS", _RCS, 0o755)
        _write(root / "etc/acpi/PWRF/00000080", _POWER_BUTTON, 0o755)
        _write(root / "srv/www/index.html", PAGE, 0o644)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        try:
            subprocess.run(
                [
                    mkfs,
                    "-q",
                    "-F",
                    "-t",
                    "ext4",
                    "-L",
                    "cloudlet-guest",
                    "-d",
                    str(root),
                    str(path),
                    f"{DISK_MIB}M",
                ],
                capture_output=True,
                text=True,
                check=True,
            )
        except subprocess.CalledProcessError as exc:
            raise DriverUnavailableError(f"mkfs.ext4 failed: {exc.stderr.strip()}") from exc


def _write(path: Path, text: str, mode: int) -> None:
    path.write_text(text)
    path.chmod(mode)
