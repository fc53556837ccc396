"""Blobs as files under one directory: the default backend, and the layout that
controllers kept before there were backends (``<root>/images/<digest>``, ...)."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO

from cloudlet.controller.blobs._base import READ_CHUNK, BlobStream
from cloudlet.errors import BlobStoreError, NotFoundError


class FilesystemBlobStore:
    """Blobs under `root`; a mount several replicas share serves them all.

    A blob appears only whole: it is fsynced, renamed into place (copied first when
    `root` is on another file system than the source) and its directory fsynced.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def __repr__(self) -> str:
        return f"FilesystemBlobStore({str(self.root)!r})"

    def path(self, key: str) -> Path:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"not a blob key: {key!r}")
        return self.root / key

    def put(self, key: str, path: Path) -> None:
        dst = self.path(key)
        try:
            _fsync(path)
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(path, dst)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                _copy_into_place(path, dst)
            _fsync(dst.parent)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise BlobStoreError(f"cannot store {key} under {self.root}: {exc}") from exc

    def open_range(self, key: str, start: int, end: int) -> BlobStream:
        try:
            f = open(self.path(key), "rb")  # noqa: SIM115 (closed by the generator)
        except FileNotFoundError:
            raise NotFoundError(f"blob {key} is missing from {self.root}") from None
        except OSError as exc:
            raise BlobStoreError(f"cannot read {key} under {self.root}: {exc}") from exc
        return _read(f, start, end)

    def size(self, key: str) -> int | None:
        try:
            return self.path(key).stat().st_size
        except FileNotFoundError:
            return None

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(key).unlink()


def _read(f: BinaryIO, start: int, end: int) -> BlobStream:
    with f:
        f.seek(start)
        left = end - start
        while left > 0:
            chunk = f.read(min(READ_CHUNK, left))
            if not chunk:
                raise BlobStoreError(f"{f.name} ended {left} bytes early")
            left -= len(chunk)
            yield chunk


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_into_place(src: Path, dst: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.")
    try:
        with os.fdopen(fd, "wb") as out, open(src, "rb") as f:
            shutil.copyfileobj(f, out, READ_CHUNK)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
