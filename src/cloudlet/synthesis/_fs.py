"""File helpers: atomic outputs, sparse copies and hole punching."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import secrets
from pathlib import Path

from cloudlet.errors import ConflictError, SynthesisError

_FALLOC_FL_KEEP_SIZE = 1
_FALLOC_FL_PUNCH_HOLE = 2
_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def os_error(exc: OSError, what: str) -> SynthesisError:
    """One readable line for an OSError met while doing `what`."""
    if exc.errno == errno.ENOSPC:
        return SynthesisError(f"no space left on device while {what}")
    return SynthesisError(f"{what}: {exc.strerror or exc}")


class AtomicFile:
    """A temporary file beside `path` that becomes `path` on commit, or vanishes."""

    def __init__(self, path: Path, *, force: bool = False) -> None:
        self.path = Path(path)
        if self.path.exists() and not force:
            raise ConflictError(f"{self.path} exists (use --force to overwrite)")
        if not self.path.parent.is_dir():
            raise SynthesisError(f"no such directory: {self.path.parent}")
        self.tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}.tmp")
        try:
            self.fd = os.open(self.tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as exc:
            raise os_error(exc, f"creating {self.tmp}") from exc

    def commit(self) -> None:
        try:
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = -1
            os.replace(self.tmp, self.path)
            dfd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as exc:
            self.discard()
            raise os_error(exc, f"writing {self.path}") from exc

    def discard(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()


def pwrite_all(fd: int, data: memoryview | bytes, offset: int) -> None:
    view = memoryview(data).cast("B")
    while len(view):
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Deallocate a range (reads back as zeros); write zeros where holes are unsupported."""
    if _libc.fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) == 0:
        return
    err = ctypes.get_errno()
    if err not in (errno.EOPNOTSUPP, errno.ENOSYS):
        raise OSError(err, os.strerror(err))
    zeros = bytes(min(length, 1 << 20))
    end = offset + length
    while offset < end:
        pwrite_all(fd, zeros[: end - offset], offset)
        offset += len(zeros)


def data_extents(fd: int, size: int) -> list[tuple[int, int]]:
    """(offset, length) of the data regions of a file, via SEEK_DATA / SEEK_HOLE."""
    out: list[tuple[int, int]] = []
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                break
            return [(0, size)]
        end = os.lseek(fd, start, os.SEEK_HOLE)
        out.append((start, min(end, size) - start))
        pos = end
    return out


def copy_range(src: int, dst: int, src_off: int, dst_off: int, length: int) -> None:
    """Copy bytes between files in the kernel, falling back to read/write."""
    while length > 0:
        try:
            n = os.copy_file_range(src, dst, length, src_off, dst_off)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            n = 0
        if n == 0:
            data = os.pread(src, min(length, 8 << 20), src_off)
            if not data:
                raise SynthesisError("source file shrank during copy")
            pwrite_all(dst, data, dst_off)
            n = len(data)
        src_off += n
        dst_off += n
        length -= n


def sparse_copy(src: int, dst: int, size: int) -> None:
    """Copy the data extents of `src` into `dst` (already truncated), leaving holes as holes."""
    for off, length in data_extents(src, size):
        copy_range(src, dst, off, off, length)
