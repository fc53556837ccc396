"""Measuring helpers for the overlay bench: timed child processes, hashes, block diffs."""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import blake3
import numpy as np

BLOCK = 4096
CHUNK = 64 * 1024**2
TIME = "/usr/bin/time"


class CommandError(RuntimeError):
    """A measured command failed; the message names it and quotes its stderr."""


@dataclass(frozen=True)
class Run:
    """One finished child process: wall seconds, peak RSS, captured stdout."""

    seconds: float
    rss_mb: float
    stdout: str


def measure(argv: Sequence[str]) -> Run:
    """Run `argv` to completion, timing it and reading its peak RSS.

    The peak comes from GNU time's `%M`, not from our own wait4: Python starts children
    with vfork, so the kernel would charge the child with this process's high-water mark
    (2 GiB after hashing an image), hiding any smaller peak.

    Raises:
        CommandError: the command is missing or exits non-zero.
    """
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.NamedTemporaryFile("r") as rss,
    ):
        wrapped = [TIME, "-f", "%M", "-o", rss.name, *map(str, argv)]
        started = time.perf_counter()
        try:
            proc = subprocess.run(wrapped, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        except FileNotFoundError as exc:
            raise CommandError(f"{TIME} not found (apt-get install time)") from exc
        seconds = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        if proc.returncode != 0:
            tail = "\n".join(err.read().decode(errors="replace").splitlines()[-15:])
            raise CommandError(f"`{' '.join(map(str, argv))}` exited {proc.returncode}\n{tail}")
        # GNU time reports %M in KiB, as the last line of its output file.
        peak_kib = int(rss.read().split()[-1])
    return Run(seconds=seconds, rss_mb=peak_kib / 1024, stdout=stdout)


def warm(*paths: Path) -> None:
    """Read files (or every file under a directory) once so they sit in the page cache."""
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            with file.open("rb", buffering=0) as f:
                while f.read(CHUNK):
                    pass


def size_of(path: Path) -> int:
    """Bytes in a file, or in all files under a directory (an overlay may be either)."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def allocated(path: Path) -> int:
    """Bytes actually allocated on disk for a file (less than its size when sparse)."""
    return path.stat().st_blocks * 512


def digest(path: Path) -> str:
    """The BLAKE3 hex digest of a file's contents."""
    return blake3.blake3(max_threads=blake3.blake3.AUTO).update_mmap(str(path)).hexdigest()


@dataclass(frozen=True)
class BlockDiff:
    """How two equal-size images differ, counted in aligned 4 KiB blocks."""

    changed_nonzero: int
    changed_to_zero: int
    nonzero_in_modified: int

    @property
    def changed_nonzero_mb(self) -> float:
        return self.changed_nonzero * BLOCK / 1e6


def block_diff(base: Path, modified: Path) -> BlockDiff:
    """Count the 4 KiB blocks of `modified` that differ from `base`, split by zero/non-zero."""
    changed_nonzero = changed_to_zero = nonzero = 0
    with base.open("rb") as fb, modified.open("rb") as fm:
        while True:
            b, m = fb.read(CHUNK), fm.read(CHUNK)
            if not m:
                break
            b = b.ljust(len(m), b"\0")
            bv = np.frombuffer(b, dtype=np.uint64).reshape(-1, BLOCK // 8)
            mv = np.frombuffer(m, dtype=np.uint64).reshape(-1, BLOCK // 8)
            differs = (bv != mv).any(axis=1)
            is_nonzero = mv.any(axis=1)
            changed_nonzero += int((differs & is_nonzero).sum())
            changed_to_zero += int((differs & ~is_nonzero).sum())
            nonzero += int(is_nonzero.sum())
    return BlockDiff(changed_nonzero, changed_to_zero, nonzero)
