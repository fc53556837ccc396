"""A real ext4 image, changed through the kernel, round-tripped through the CLI."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cloudlet.synthesis import create_overlay

pytestmark = [pytest.mark.integration, pytest.mark.qemu]

CLI = [sys.executable, "-m", "cloudlet.cli"]


def need(tool: str) -> str:
    path = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")
    if path is None:
        pytest.skip(f"{tool} is not installed (apt-get install qemu-utils e2fsprogs)")
    return path


def run(*args: str | Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, check=False)
    if ok and proc.returncode != 0:
        raise AssertionError(f"{args} failed: {proc.stderr}")
    return proc


def sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def modify(image: Path, work: Path, payload: dict[str, bytes]) -> str:
    """Write files into the filesystem of `image` in place: loop mount, else debugfs."""
    mnt = work / "mnt"
    mnt.mkdir()
    if os.geteuid() == 0 and run("mount", "-o", "loop", image, mnt, ok=False).returncode == 0:
        try:
            for name, data in payload.items():
                (mnt / name).write_bytes(data)
            (mnt / "etc" / "motd").write_text("changed\n")
            (mnt / "bin" / "tool.bin").unlink()
        finally:
            run("umount", mnt)
        return "mount"
    debugfs = need("debugfs")
    for name, data in payload.items():
        src = work / f"payload-{name}"
        src.write_bytes(data)
        run(debugfs, "-w", "-R", f"write {src} {name}", image)
    run(debugfs, "-w", "-R", "rm bin/tool.bin", image)
    return "debugfs"


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    mkfs = need("mkfs.ext4")
    need("qemu-img")
    work = tmp_path_factory.mktemp("ext4")
    rng = np.random.default_rng(42)
    root = work / "root"
    (root / "etc").mkdir(parents=True)
    (root / "bin").mkdir()
    (root / "etc" / "motd").write_text("hello\n")
    lib = rng.integers(0, 256, 3 << 20, dtype=np.uint8).tobytes()
    (root / "bin" / "lib.so").write_bytes(lib)
    (root / "bin" / "tool.bin").write_bytes(rng.integers(0, 256, 1 << 20, dtype=np.uint8).tobytes())
    (root / "etc" / "words").write_bytes(b"".join(b"word %d\n" % i for i in range(100_000)))
    base = work / "base.img"
    run(mkfs, "-q", "-F", "-b", "4096", "-d", root, base, "64M")
    mod = work / "mod.img"
    shutil.copyfile(base, mod)
    payload = {
        "new.bin": rng.integers(0, 256, 2 << 20, dtype=np.uint8).tobytes(),
        "lib-copy.so": lib,  # the same blocks as a base file, elsewhere on disk
        "notes.txt": b"".join(b"note %d\n" % i for i in range(50_000)),
        "zeros.dat": bytes(1 << 20),
    }
    modify(mod, work, payload)
    assert sha(base) != sha(mod)
    return {"work": work, "base": base, "mod": mod}


def test_raw_roundtrip_and_info(images):
    work, base, mod = images["work"], images["base"], images["mod"]
    ovl = work / "raw.ovl"
    created = json.loads(
        run(
            *CLI, "overlay", "create", "--base", base, "--modified", mod, "-o", ovl, "--json"
        ).stdout
    )
    assert created["overlay_size"] == ovl.stat().st_size
    info = json.loads(run(*CLI, "overlay", "info", ovl, "--json").stdout)
    assert info["chunks"]["base"] >= 700  # lib-copy.so found in the base, not stored
    assert info["base_digest"] == run(*CLI, "image", "index", base, "-q").stdout.strip()
    assert ovl.stat().st_size < 4 << 20
    run(*CLI, "overlay", "verify", ovl)
    out = work / "out.img"
    run(*CLI, "overlay", "apply", "--base", base, ovl, "-o", out)
    assert sha(out) == sha(mod)
    run("qemu-img", "compare", "-q", "-f", "raw", "-F", "raw", mod, out)
    # holes where the base had none are fine; the output must not be denser than needed
    assert out.stat().st_blocks * 512 <= mod.stat().st_blocks * 512 + (1 << 20)


def test_qcow2_in_and_out(images):
    work, base, mod = images["work"], images["base"], images["mod"]
    mod_q = work / "mod.qcow2"
    run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", mod, mod_q)
    ovl = work / "q.ovl"
    run(*CLI, "overlay", "create", "--base", base, "--modified", mod_q, "-o", ovl, "--level", "9")
    out_q = work / "out.qcow2"
    run(*CLI, "overlay", "apply", "--base", base, ovl, "-o", out_q, "--format", "qcow2")
    run("qemu-img", "compare", "-q", "-F", "raw", out_q, mod)
    backing = json.loads(run("qemu-img", "info", "--output=json", out_q).stdout)
    assert backing["format"] == "qcow2"
    assert Path(backing["backing-filename"]).resolve() == base.resolve()
    assert out_q.stat().st_size < 16 << 20  # only the changed clusters


def test_memory_through_cli(images):
    work, base, mod = images["work"], images["base"], images["mod"]
    rng = np.random.default_rng(1)
    m0 = rng.integers(0, 256, 4 << 20, dtype=np.uint8)
    m1 = m0.copy()
    m1[: 1 << 20] = np.fromfile(mod, np.uint8, count=1 << 20, offset=8 << 20)  # page cache
    m1[2 << 20 : 3 << 20] = 0
    (work / "m0.raw").write_bytes(m0.tobytes())
    (work / "m1.raw").write_bytes(m1.tobytes())
    ovl = work / "mem.ovl"
    run(*CLI, "overlay", "create", "--base", base, "--modified", mod, "-o", ovl,
        "--memory-base", work / "m0.raw", "--memory", work / "m1.raw")  # fmt: skip
    run(*CLI, "overlay", "apply", "--base", base, ovl, "-o", work / "mem-disk.img",
        "--memory-base", work / "m0.raw", "--memory-out", work / "m1.out")  # fmt: skip
    assert sha(work / "mem-disk.img") == sha(mod)
    assert (work / "m1.out").read_bytes() == m1.tobytes()


def test_cli_errors_are_one_line_and_leave_nothing(images):
    work, base, mod = images["work"], images["base"], images["mod"]
    ovl = work / "err.ovl"
    create_overlay(base, mod, ovl, level=1)
    before = set(os.listdir(work))
    cases = [
        ["overlay", "apply", "--base", mod, ovl, "-o", work / "x.img"],  # wrong base
        ["overlay", "apply", "--base", base, base, "-o", work / "x.img"],  # not an overlay
        ["overlay", "create", "--base", base, "--modified", mod, "-o", ovl],  # exists
        ["overlay", "apply", "--base", base, ovl, "-o", base],  # exists
    ]
    for args in cases:
        proc = run(*CLI, *args, ok=False)
        assert proc.returncode != 0, args
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert set(os.listdir(work)) - {"mod.img.cloudlet-index"} == before
