"""Build the real disk images the overlay bench diffs: a Debian base and app variants.

The base is `debootstrap --variant=minbase bookworm` in a 2 GiB ext4 raw image. Each
variant starts as a sparse copy of the base and gets its packages installed into the
loop-mounted copy, so unchanged blocks stay aligned with the base, as they would in a
VM customized from a cached base. Needs root, loop devices, debootstrap and e2fsprogs.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_SIZE = 2 * 1024**3
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
BASE_NAME = "base"

SMALL_APP = '''\
"""A tiny Flask web app: the SMALL overlay bench variant."""

from flask import Flask, jsonify

app = Flask(__name__)


@app.get("/")
def index():
    return jsonify(service="hello", status="ok")


if __name__ == "__main__":
    app.run(host="0.0.0.0", port=8080)
'''

LARGE_APP = '''\
"""Face detection with OpenCV's Haar cascade: the LARGE overlay bench variant."""

import sys

import cv2

CASCADE = "/usr/share/opencv4/haarcascades/haarcascade_frontalface_default.xml"


def detect(path):
    """Return the (x, y, w, h) boxes of the faces found in the image at `path`."""
    detector = cv2.CascadeClassifier(CASCADE)
    gray = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2GRAY)
    return detector.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5)


if __name__ == "__main__":
    for x, y, w, h in detect(sys.argv[1]):
        print(x, y, w, h)
'''


@dataclass(frozen=True)
class Variant:
    """An app image derived from the base: packages to install, files to write, a smoke test."""

    name: str
    packages: tuple[str, ...]
    files: dict[str, str] = field(default_factory=dict)
    check: tuple[str, ...] = ()


VARIANTS: dict[str, Variant] = {
    "small": Variant(
        name="small",
        packages=("python3-flask",),
        files={"srv/app/app.py": SMALL_APP},
        check=("python3", "-c", "import flask"),
    ),
    "large": Variant(
        name="large",
        # opencv-data carries the Haar cascades; it is only a Recommends of python3-opencv.
        packages=("python3-opencv", "opencv-data"),
        files={"srv/app/faces.py": LARGE_APP},
        check=(
            "python3",
            "-c",
            "import cv2, os; assert not cv2.CascadeClassifier("
            "'/usr/share/opencv4/haarcascades/haarcascade_frontalface_default.xml').empty()",
        ),
    ),
}

CHROOT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "DEBIAN_FRONTEND": "noninteractive",
    "LC_ALL": "C",
    "HOME": "/root",
}
POLICY_RC_D = "#!/bin/sh\n# Never start services while building the image.\nexit 101\n"


class ImageBuildError(RuntimeError):
    """A step of the image build failed; the message names the command and its output."""


def run(argv: Sequence[str], *, env: dict[str, str] | None = None, quiet: bool = True) -> str:
    """Run a command, return its stdout, and turn a failure into an ImageBuildError."""
    try:
        proc = subprocess.run(
            list(argv),
            env=env,
            check=False,
            text=True,
            stdout=subprocess.PIPE if quiet else None,
            stderr=subprocess.STDOUT if quiet else None,
        )
    except FileNotFoundError as exc:
        raise ImageBuildError(f"{argv[0]} not found: install it (apt-get install ...)") from exc
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout or "").splitlines()[-20:])
        raise ImageBuildError(f"`{' '.join(argv)}` exited {proc.returncode}\n{tail}")
    return proc.stdout or ""


def image_path(cache_dir: Path, name: str) -> Path:
    """Where the finished image `name` lives in the cache."""
    return cache_dir / f"{name}.img"


def build_info(cache_dir: Path, name: str) -> dict[str, object]:
    """The sidecar written when image `name` was built (build seconds, packages), or {}."""
    path = cache_dir / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else {}


@contextlib.contextmanager
def loop_mounted(image: Path, workdir: Path) -> Iterator[Path]:
    """Attach `image` to a loop device, mount it, and always unmount and detach on exit."""
    device = run(["losetup", "--find", "--show", str(image)]).strip()
    try:
        mountpoint = Path(tempfile.mkdtemp(prefix="mnt-", dir=workdir))
        try:
            run(["mount", device, str(mountpoint)])
            try:
                yield mountpoint
            finally:
                _umount(mountpoint)
        finally:
            mountpoint.rmdir()
    finally:
        run(["losetup", "--detach", device])


def _umount(path: Path) -> None:
    """Unmount `path`, retrying briefly: a just-exited chroot process can hold it busy."""
    for _ in range(10):
        if subprocess.run(["umount", str(path)], check=False).returncode == 0:
            return
        time.sleep(1)
    run(["umount", "--lazy", str(path)])


@contextlib.contextmanager
def chroot_mounts(root: Path) -> Iterator[None]:
    """Mount /proc, /sys, /dev and /dev/pts inside `root` for apt, unmounting in reverse."""
    mounts = [
        (["mount", "-t", "proc", "proc"], root / "proc"),
        (["mount", "-t", "sysfs", "sysfs"], root / "sys"),
        (["mount", "--bind", "/dev"], root / "dev"),
        (["mount", "-t", "devpts", "-o", "newinstance", "devpts"], root / "dev/pts"),
    ]
    done: list[Path] = []
    try:
        for argv, target in mounts:
            target.mkdir(parents=True, exist_ok=True)
            run([*argv, str(target)])
            done.append(target)
        yield
    finally:
        for target in reversed(done):
            _umount(target)


def _mkfs(image: Path) -> None:
    """Create a sparse 2 GiB file holding an ext4 file system, all metadata written now.

    Eager inode-table and journal init keep the kernel's lazy-init thread from
    writing the fs after the fact, so the base's bytes are settled when it is cached.
    """
    with image.open("wb") as f:
        f.truncate(IMAGE_SIZE)
    run(
        [
            "mkfs.ext4",
            "-q",
            "-F",
            "-L",
            "cloudlet-root",
            "-E",
            "lazy_itable_init=0,lazy_journal_init=0",
            str(image),
        ]
    )


def _build_base(partial: Path, workdir: Path) -> dict[str, object]:
    _mkfs(partial)
    with loop_mounted(partial, workdir) as root:
        run(["debootstrap", "--variant=minbase", SUITE, str(root), MIRROR])
        (root / "etc/fstab").write_text("LABEL=cloudlet-root / ext4 defaults 0 1\n")
        (root / "etc/hostname").write_text("cloudlet-base\n")
        trim(root)
    return {"suite": SUITE, "variant": "minbase"}


def _chroot(root: Path, *argv: str) -> str:
    return run(["chroot", str(root), *argv], env=CHROOT_ENV)


def _build_variant(variant: Variant, base: Path, partial: Path, workdir: Path) -> dict[str, object]:
    run(["cp", "--sparse=always", str(base), str(partial)])
    with loop_mounted(partial, workdir) as root:
        policy = root / "usr/sbin/policy-rc.d"
        resolv = root / "etc/resolv.conf"
        resolv_before = resolv.read_bytes() if resolv.exists() else None
        policy.write_text(POLICY_RC_D)
        policy.chmod(0o755)
        shutil.copyfile("/etc/resolv.conf", resolv)
        try:
            with chroot_mounts(root):
                _chroot(root, "apt-get", "update")
                _chroot(
                    root, "apt-get", "install", "-y", "--no-install-recommends", *variant.packages
                )
                _chroot(root, "apt-get", "clean")
                for rel, text in variant.files.items():
                    target = root / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_text(text)
                if variant.check:
                    _chroot(root, *variant.check)
        finally:
            policy.unlink(missing_ok=True)
            if resolv_before is None:
                resolv.unlink(missing_ok=True)
            else:
                resolv.write_bytes(resolv_before)
        # Package lists are build-time state; a shipped image does not need 40 MB of them.
        lists = root / "var/lib/apt/lists"
        for entry in lists.iterdir():
            if entry.is_file():
                entry.unlink()
        trim(root)
    return {"packages": list(variant.packages)}


def trim(root: Path) -> None:
    """Discard the filesystem's free blocks. ext4 frees deleted blocks only when
    its journal commits, so sync first: otherwise what was just deleted (apt's
    .deb files) stays on disk as stale, incompressible data."""
    run(["sync", "-f", str(root)])
    run(["fstrim", str(root)])


def ensure_image(cache_dir: Path, name: str, *, log: bool = True) -> Path:
    """Return the cached image `name` ("base" or a VARIANTS key), building it if missing.

    The image is built under a `.partial` name and renamed only when complete, so an
    interrupted build leaves nothing that looks finished. Variants build the base first.
    """
    final = image_path(cache_dir, name)
    if final.exists():
        return final
    base = None if name == BASE_NAME else ensure_image(cache_dir, BASE_NAME, log=log)
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = final.with_suffix(".img.partial")
    partial.unlink(missing_ok=True)
    if log:
        print(f"building {final} ...", flush=True)
    started = time.perf_counter()
    try:
        if base is None:
            info = _build_base(partial, cache_dir)
        else:
            info = _build_variant(VARIANTS[name], base, partial, cache_dir)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    info["build_s"] = round(time.perf_counter() - started, 1)
    info["built_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    (cache_dir / f"{name}.json").write_text(json.dumps(info, indent=2) + "\n")
    os.replace(partial, final)
    if log:
        print(f"built {final} in {info['build_s']} s", flush=True)
    return final
