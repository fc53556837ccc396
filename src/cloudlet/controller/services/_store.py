"""Artifact bytes on the controller's disk: uploads in progress and published blobs.

Layout under the controller's data dir::

    uploads/<upload id>              bytes received so far (written at offsets)
    artifacts/images/<digest>        base images, named by their digest
    artifacts/overlays/<root digest> overlays, named by their manifest's root digest

An artifact appears under ``artifacts/`` only whole and checked: the upload file
is fsynced and renamed into place (same file system), then its directory fsynced.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import blake3

from cloudlet.synthesis import base_digest
from cloudlet.synthesis.index import index_path

#: Bytes gathered from the request body before one write (and one thread hop).
WRITE_BATCH = 1 << 20
_QCOW2_MAGIC = b"QFI\xfb"


@dataclass(frozen=True)
class ChunkResult:
    """What one PUT of a chunk stored: bytes written from its offset, and whether the
    body ran past the upload's declared size."""

    written: int
    overflow: bool = False


@dataclass(frozen=True)
class ArtifactStore:
    data_dir: Path

    @property
    def uploads(self) -> Path:
        return self.data_dir / "uploads"

    def upload_path(self, upload_id: str) -> Path:
        return self.uploads / upload_id

    def image_path(self, digest: str) -> Path:
        return self.data_dir / "artifacts" / "images" / digest

    def overlay_path(self, overlay_id: str) -> Path:
        return self.data_dir / "artifacts" / "overlays" / overlay_id

    def package_path(self, version: str) -> Path:
        return self.data_dir / "artifacts" / "agent-packages" / f"{version}.whl"

    def create_upload_file(self, upload_id: str) -> Path:
        self.uploads.mkdir(parents=True, exist_ok=True)
        path = self.upload_path(upload_id)
        path.touch(exist_ok=True)
        return path

    def free_bytes(self) -> int:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        st = os.statvfs(self.data_dir)
        return st.f_bavail * st.f_frsize


async def write_chunk(
    path: Path, offset: int, limit: int, body: AsyncIterator[bytes]
) -> ChunkResult:
    """Write a request body into `path` from `offset`, never past `limit` bytes.

    Whatever `body` yields is written and fsynced (a body cut short by a disconnect
    should simply end), so the client resumes from there. A body running past
    `limit` stops at once (``overflow``); the caller must not count what was written.
    """
    fd = await anyio.to_thread.run_sync(os.open, path, os.O_WRONLY | os.O_CREAT, 0o600)
    written, pending = 0, bytearray()

    async def flush() -> None:
        nonlocal written
        if pending:
            data = bytes(pending)
            pending.clear()
            await anyio.to_thread.run_sync(_pwrite_all, fd, data, offset + written)
            written += len(data)

    try:
        async for piece in body:
            if offset + written + len(pending) + len(piece) > limit:
                return ChunkResult(written, overflow=True)
            pending += piece
            if len(pending) >= WRITE_BATCH:
                await flush()
        await flush()
        await anyio.to_thread.run_sync(os.fsync, fd)
    finally:
        os.close(fd)
    return ChunkResult(written)


def _pwrite_all(fd: int, data: bytes, position: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, position)
        view, position = view[n:], position + n


def image_digest(path: Path) -> str:
    """The id of a base image: synthesis.base_digest's definition (blake3 of the raw
    bytes; a qcow2 image is hashed as its raw conversion), so that an overlay's base
    digest equals the id of the image it was made on."""
    with open(path, "rb") as f:
        qcow2 = f.read(4) == _QCOW2_MAGIC
    if not qcow2:
        hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
        if path.stat().st_size:
            hasher.update_mmap(path)
        return hasher.hexdigest()
    try:
        return base_digest(path).hex()
    finally:
        # base_digest caches an index beside the image: not wanted in uploads/.
        with contextlib.suppress(OSError):
            index_path(path).unlink()


def publish(src: Path, dst: Path) -> None:
    """Move a checked upload into place atomically and durably.

    A source already gone while the destination exists means a concurrent completion
    of the same upload published it first: the same bytes, so nothing to do.
    """
    try:
        fd = os.open(src, os.O_RDONLY)
    except FileNotFoundError:
        if dst.is_file():
            return
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dst)
    dir_fd = os.open(dst.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def discard(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
