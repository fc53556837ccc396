"""Reading disk and memory images as arrays of 4 KiB chunks, raw or through qemu-img."""

from __future__ import annotations

import contextlib
import mmap
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from cloudlet.errors import SynthesisError

from ._fs import data_extents
from .format import CHUNK_SIZE

LANES = CHUNK_SIZE // 8
QCOW2_MAGIC = b"QFI\xfb"


def is_qcow2(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == QCOW2_MAGIC


def qemu_img() -> str:
    exe = shutil.which("qemu-img")
    if exe is None:
        raise SynthesisError("qemu-img not found (install qemu-utils) but a qcow2 image was given")
    return exe


def run_qemu_img(*args: str) -> None:
    proc = subprocess.run([qemu_img(), *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip().splitlines()
        raise SynthesisError(f"qemu-img {args[0]} failed: {msg[-1] if msg else proc.returncode}")


@contextlib.contextmanager
def raw_view(path: Path, scratch_dir: Path | None = None) -> Iterator[Path]:
    """Yield a raw version of `path`: itself, or a temporary sparse conversion of a qcow2."""
    if not path.exists():
        raise SynthesisError(f"no such image: {path}")
    if not is_qcow2(path):
        yield path
        return
    with tempfile.TemporaryDirectory(dir=scratch_dir, prefix=".cloudlet-raw-") as tmp:
        raw = Path(tmp) / "image.raw"
        run_qemu_img("convert", "-q", "-f", "qcow2", "-O", "raw", "-S", "4k", str(path), str(raw))
        yield raw


class ImageReader:
    """A raw image read as rows of 512 uint64 lanes, zero-padded to whole chunks.

    Windows are read with readinto into one reused buffer; random rows come from a
    read-only mmap whose pages are dropped again (MADV_DONTNEED) so RSS stays bounded.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDONLY)
        self.size = os.fstat(self.fd).st_size
        self.n_chunks = -(-self.size // CHUNK_SIZE)
        self._full = self.size // CHUNK_SIZE
        self._mm = mmap.mmap(self.fd, 0, prot=mmap.PROT_READ) if self._full else None
        self._rows = (
            np.frombuffer(self._mm, dtype=np.uint64, count=self._full * LANES).reshape(-1, LANES)
            if self._mm is not None
            else np.zeros((0, LANES), np.uint64)
        )
        extents = data_extents(self.fd, self.size)
        self._ext_start = np.array([o for o, _ in extents], np.int64)
        self._ext_end = np.array([o + n for o, n in extents], np.int64)
        tail = self.size - self._full * CHUNK_SIZE
        self._tail = np.zeros(LANES, np.uint64)
        if tail:
            self._tail.view(np.uint8)[:tail] = np.frombuffer(
                os.pread(self.fd, tail, self._full * CHUNK_SIZE), np.uint8
            )

    def window(self, start: int, stop: int, out: np.ndarray) -> np.ndarray:
        """Rows [start, stop) read into `out` (at least stop-start rows); returns the view.

        Only data extents are read; holes (most of a fresh image) become zeros for free.
        """
        rows = out[: stop - start]
        flat = rows.view(np.uint8).reshape(-1)
        buf = memoryview(flat)
        lo, hi = start * CHUNK_SIZE, min(self.size, stop * CHUNK_SIZE)
        first = int(np.searchsorted(self._ext_end, lo, side="right"))
        last = int(np.searchsorted(self._ext_start, hi, side="left"))
        pos = lo
        for i in range(first, last):
            a, b = max(lo, int(self._ext_start[i])), min(hi, int(self._ext_end[i]))
            if a > pos:
                flat[pos - lo : a - lo] = 0
            self._read_into(buf[a - lo : b - lo], a)
            pos = b
        flat[pos - lo :] = 0
        return rows

    def data_mask(self, start: int, stop: int) -> np.ndarray:
        """Which chunks in [start, stop) overlap a data extent (the others are holes)."""
        mask = np.zeros(stop - start, bool)
        lo, hi = start * CHUNK_SIZE, stop * CHUNK_SIZE
        first = int(np.searchsorted(self._ext_end, lo, side="right"))
        last = int(np.searchsorted(self._ext_start, hi, side="left"))
        for i in range(first, last):
            a = max(lo, int(self._ext_start[i])) // CHUNK_SIZE
            b = -(-min(hi, int(self._ext_end[i])) // CHUNK_SIZE)
            mask[a - start : b - start] = True
        return mask

    def _read_into(self, view: memoryview, offset: int) -> None:
        got = 0
        while got < len(view):
            n = os.preadv(self.fd, [view[got:]], offset + got)
            if n <= 0:
                raise SynthesisError(f"{self.path}: image shrank while being read")
            got += n

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """Like gather, for mostly ascending indices: one pread per run, no page faults."""
        idx = np.asarray(idx, dtype=np.int64)
        out = np.empty((len(idx), LANES), np.uint64)
        if not len(idx):
            return out
        buf = memoryview(out.view(np.uint8).reshape(-1))
        brk = np.flatnonzero(np.diff(idx) != 1) + 1
        for a, b in zip(np.r_[0, brk], np.r_[brk, len(idx)], strict=True):
            off = int(idx[a]) * CHUNK_SIZE
            end = min(self.size, int(idx[b - 1] + 1) * CHUNK_SIZE)
            view = buf[int(a) * CHUNK_SIZE : int(b) * CHUNK_SIZE]
            self._read_into(view[: end - off], off)
            if end - off < len(view):
                view[end - off :] = bytes(len(view) - (end - off))
        return out

    def gather(self, idx: np.ndarray) -> np.ndarray:
        """Copies of the rows at chunk indices `idx` (any order, repeats allowed)."""
        idx = np.asarray(idx, dtype=np.int64)
        if self._full == self.n_chunks or not len(idx) or idx.max() < self._full:
            return self._rows[idx]
        out = np.empty((len(idx), LANES), np.uint64)
        full = idx < self._full
        out[full] = self._rows[idx[full]]
        out[~full] = self._tail
        return out

    def drop_pages(self) -> None:
        if self._mm is not None:
            self._mm.madvise(mmap.MADV_DONTNEED)

    def close(self) -> None:
        self._rows = np.zeros((0, LANES), np.uint64)
        if self._mm is not None:
            with contextlib.suppress(BufferError):
                self._mm.close()
        os.close(self.fd)

    def __enter__(self) -> ImageReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
