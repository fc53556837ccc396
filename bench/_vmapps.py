"""App VMs for the synthesis bench: a base disk, an app disk, its resumable overlay, its zstd image.

The overlay is made the way an app developer would publish a VM: the app disk is
booted once under the qemu driver, suspended as soon as its service answers
(:func:`cloudlet.compute.qemu.snapshot.capture`), and the overlay holds that disk, the
RAM and the device state, so a site resumes the VM with its service listening.

``tiny`` is the test guest (cloudlet.testbed.guest) with a changed page, for a quick
dry run. ``small`` and ``large`` are the overlay bench's Debian images (bench/_images.py)
copied into our own cache dir; the copies of the variants get, written with
``debugfs -w`` so the base's blocks stay where they were, ``/srv/app/cloudlet-init``
(the guest's PID 1: starts the app service on port 8080 and restarts it if it exits)
and, for ``large``, ``/srv/app/serve.py`` (the face detector behind an HTTP port:
it loads OpenCV and the Haar cascade before it listens). They boot Debian's kernel
with our busybox initramfs: it loads the virtio/ext4 modules, brings eth0 up as
10.0.2.15/24 via 10.0.2.2 (QEMU user networking), mounts /dev/vda with /proc, /sys,
/run and /tmp under it, and switch_roots into ``/srv/app/cloudlet-init``. Debian
minbase has no init system and no iproute2, which is why the initramfs does the rest.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cloudlet.compute.base import WorkloadSpec
from cloudlet.compute.qemu.snapshot import capture
from cloudlet.synthesis import create_overlay
from cloudlet.testbed import guest as tg
from cloudlet.testbed.local import free_port

APP_PORT = 8080
APPEND = "console=ttyS0 root=/dev/vda rw quiet mitigations=off"

INITRAMFS_INIT = """#!/bin/busybox sh
B=/bin/busybox
$B mkdir -p /proc /sys /dev /newroot
$B mount -t proc proc /proc
$B mount -t sysfs sys /sys
$B mount -t devtmpfs dev /dev
exec >/dev/console 2>&1 </dev/console
for m in $($B cat /modules.order); do $B insmod "/modules/$m"; done
n=0
while [ ! -b /dev/vda ] && [ $n -lt 100 ]; do $B usleep 50000; n=$((n + 1)); done
$B ip link set lo up
$B ip addr add 10.0.2.15/24 dev eth0
$B ip link set eth0 up
$B ip route add default via 10.0.2.2
if ! $B mount -t ext4 /dev/vda /newroot; then
    echo "cloudlet-initramfs: cannot mount /dev/vda"; $B poweroff -f
fi
$B umount /proc /sys
$B mount --move /dev /newroot/dev
$B mount -t proc proc /newroot/proc
$B mount -t sysfs sys /newroot/sys
$B mount -t tmpfs -o mode=0755 run /newroot/run
$B mount -t tmpfs -o mode=1777 tmp /newroot/tmp
if [ -x /newroot/srv/app/cloudlet-init ]; then
    echo "cloudlet-initramfs: switching to the app"
    exec $B switch_root /newroot /srv/app/cloudlet-init
fi
echo "cloudlet-initramfs: no app: the base VM idles"
exec $B switch_root /newroot /bin/sh -c 'echo "cloudlet-base: idle"; while :; do sleep 3600; done'
"""
BASE_IDLE = "cloudlet-base: idle"

GUEST_INIT = """#!/bin/sh
# PID 1 of the app VM: run the app service, restart it if it exits.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8
cd /srv/app
while true; do
    echo "cloudlet-app: starting {script}"
    python3 {script}
    echo "cloudlet-app: {script} exited $?"
    sleep 1
done
"""

LARGE_SERVE = '''\
"""The face detector behind HTTP: OpenCV and the Haar cascade load before the port opens."""

import json
from http.server import BaseHTTPRequestHandler, HTTPServer

import cv2

CASCADE = "/usr/share/opencv4/haarcascades/haarcascade_frontalface_default.xml"
DETECTOR = cv2.CascadeClassifier(CASCADE)
assert not DETECTOR.empty()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"service": "faces", "status": "ok", "opencv": cv2.__version__})
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())


HTTPServer(("0.0.0.0", 8080), Handler).serve_forever()
'''

#: Per app: the script cloudlet-init runs, extra files, guest RAM.
APPS = {
    "small": {"script": "app.py", "files": {}, "memory_mib": 512},
    "large": {"script": "serve.py", "files": {"serve.py": LARGE_SERVE}, "memory_mib": 1024},
}


@dataclass(frozen=True)
class VmApp:
    """Everything the bench needs to run one app both ways."""

    name: str
    base: Path
    memory_base: Path | None  # the base VM's RAM, idle after boot (None: tiny)
    disk: Path  # as the developer made it (what the zstd image holds)
    overlay: Path  # resumable: the disk after its capture, its RAM and device state
    image_zst: Path
    guest_port: int
    memory_mib: int
    env: dict[str, str]


def _debugfs() -> str:
    found = shutil.which("debugfs") or shutil.which("debugfs", path="/usr/sbin:/sbin")
    if found is None:
        raise RuntimeError("debugfs is missing (apt-get install e2fsprogs)")
    return found


def _fresh(target: Path, *sources: Path) -> bool:
    return target.exists() and all(target.stat().st_mtime >= s.stat().st_mtime for s in sources)


def boot_files(cache_dir: Path) -> dict[str, str]:
    """Kernel and initramfs for the Debian apps (built once), as CLOUDLET_VM_* env."""
    kernel, modules_dir = tg._find_kernel()
    modules = tg._module_files(modules_dir, tg.MODULES)
    busybox = tg._find_busybox()
    digest = hashlib.sha256(INITRAMFS_INIT.encode())
    for path in (kernel, busybox, *modules):
        digest.update(path.name.encode() + tg._file_digest(path))
    out = cache_dir / f"boot-{digest.hexdigest()[:12]}"
    if not out.is_dir():
        tmp = Path(tempfile.mkdtemp(prefix=".boot-", dir=cache_dir))
        tg._write_kernel(kernel, tmp / "kernel")
        archive = tg._Cpio()
        for d in ("bin", "dev", "proc", "sys", "newroot", "modules"):
            archive.add(d, stat.S_IFDIR | 0o755)
        archive.add("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))
        archive.add("bin/busybox", stat.S_IFREG | 0o755, busybox.read_bytes())
        archive.add("init", stat.S_IFREG | 0o755, INITRAMFS_INIT.encode())
        for path in modules:
            archive.add(f"modules/{path.name}", stat.S_IFREG | 0o644, path.read_bytes())
        order = "".join(p.name + "\n" for p in modules).encode()
        archive.add("modules.order", stat.S_IFREG | 0o644, order)
        (tmp / "initrd.gz").write_bytes(gzip.compress(archive.finish(), 1, mtime=0))
        tmp.rename(out)
    return {
        "CLOUDLET_VM_KERNEL": str(out / "kernel"),
        "CLOUDLET_VM_INITRD": str(out / "initrd.gz"),
        "CLOUDLET_VM_APPEND": APPEND,
    }


def _write_files(disk: Path, files: dict[str, str]) -> None:
    """Write ``files`` (path in the guest -> text, mode 0755) into the ext4 image."""
    debugfs = _debugfs()
    with tempfile.TemporaryDirectory() as tmp:
        for rel, text in files.items():
            source = Path(tmp) / Path(rel).name
            source.write_text(text)
            for command in (
                f"rm {rel}",
                f"write {source} {rel}",
                f"sif {rel} mode 0100755",
            ):
                subprocess.run([debugfs, "-w", "-R", command, str(disk)], capture_output=True)
            check = subprocess.run(
                [debugfs, "-R", f"cat {rel}", str(disk)], capture_output=True, text=True
            )
            if check.stdout != text:
                raise RuntimeError(f"debugfs did not write {rel} into {disk}")


def _zstd(disk: Path) -> Path:
    out = disk.with_name(disk.name + ".zst")
    if not _fresh(out, disk):
        subprocess.run(["zstd", "-3", "-T0", "-q", "-f", str(disk), "-o", str(out)], check=True)
    return out


def _snapshot(
    app: str, disk: Path, port: int, memory_mib: int, env: dict[str, str], marker: str | None
) -> Path:
    """Boot a copy of ``disk`` until its service answers (or its console shows
    ``marker``), suspend it; returns its RAM file (the device state beside it, the disk
    as ``<app>-snap.img``)."""
    snap_disk = disk.with_name(f"{app}-snap.img")
    memory = disk.with_name(f"{app}.ram")
    boot = [Path(env[k]) for k in ("CLOUDLET_VM_KERNEL", "CLOUDLET_VM_INITRD")]
    if _fresh(memory, disk, *boot):
        return memory
    subprocess.run(["cp", "--sparse=always", str(disk), str(snap_disk)], check=True)
    spec = WorkloadSpec(
        f"capture-{app}", port=free_port(), guest_port=port, memory_mib=memory_mib,
        disk_image=snap_disk, env=env,
    )  # fmt: skip
    capture(spec, memory, accel="tcg", timeout=600, console_marker=marker, settle_s=1.0)
    return memory


def _overlay(
    base: Path, memory_base: Path | None, disk: Path, memory: Path, out: Path, level: int
) -> Path:
    snap_disk = disk.with_name(disk.stem + "-snap.img")
    state = memory.with_name(memory.name + ".vmstate")
    inputs = [base, memory] + ([memory_base] if memory_base else [])
    if not _fresh(out, *inputs):
        create_overlay(
            base, snap_disk, out, memory=memory, memory_base=memory_base, device_state=state,
            level=level, threads=2,
        )  # fmt: skip
    return out


def prepare(name: str, cache_dir: Path, images_dir: Path, level: int = 3) -> VmApp:
    """Build (or reuse) app ``name``'s files under ``cache_dir``; never writes ``images_dir``."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    if name == "tiny":
        guest = tg.build_guest(cache_dir / "guest")
        disk = cache_dir / "tiny.img"
        if not _fresh(disk, guest.disk):
            tg.with_page(guest, disk, "tiny app, synthesized at the site\n")
        base, port, memory_mib, env = guest.disk, guest.guest_port, 256, guest.vm_env()
    else:
        spec = APPS[name]
        base = cache_dir / "base.img"
        if not _fresh(base, images_dir / "base.img"):
            subprocess.run(
                ["cp", "--sparse=always", str(images_dir / "base.img"), str(base)], check=True
            )
        disk = cache_dir / f"{name}.img"
        source = images_dir / f"{name}.img"
        if not _fresh(disk, source):
            partial = disk.with_suffix(".partial")
            subprocess.run(["cp", "--sparse=always", str(source), str(partial)], check=True)
            files = {f"srv/app/{k}": v for k, v in spec["files"].items()}  # type: ignore[attr-defined]
            files["srv/app/cloudlet-init"] = GUEST_INIT.format(script=spec["script"])
            _write_files(partial, files)
            partial.rename(disk)
        port, memory_mib, env = APP_PORT, int(spec["memory_mib"]), boot_files(cache_dir)  # type: ignore[call-overload]
    memory_base = None
    if name != "tiny":  # the base VM booted and idle, with the app's memory size
        memory_base = _snapshot(f"base-{memory_mib}", base, port, memory_mib, env, BASE_IDLE)
    memory = _snapshot(name, disk, port, memory_mib, env, None)
    out = cache_dir / f"{name}-L{level}{'-mb' if memory_base else ''}.ovl"
    overlay = _overlay(base, memory_base, disk, memory, out, level)
    return VmApp(name, base, memory_base, disk, overlay, _zstd(disk), port, memory_mib, env)
