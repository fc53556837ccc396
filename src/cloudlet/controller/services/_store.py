"""Artifact bytes on the controller: uploads in progress, and publishing checked ones.

Uploads are assembled on local disk, ``uploads/<upload id>`` (written at offsets,
resumable), because completing one needs the whole file at hand: an image is
hashed, an overlay parsed and verified with random access. A checked upload is
then put whole into the :class:`~cloudlet.controller.blobs.BlobStore` under::

    images/<digest>                base images, named by their digest
    overlays/<root digest>         overlays, named by their manifest's root digest
    agent-packages/<version>.whl   agent wheels

(the filesystem backend keeps them under ``artifacts/``, as controllers always did).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import anyio

from cloudlet._digest import file_blake3
from cloudlet.controller.blobs import BlobStore, open_blob_store
from cloudlet.settings import ControllerSettings
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
    """Uploads in progress in a local directory, published blobs in `blobs`."""

    uploads: Path
    blobs: BlobStore

    @classmethod
    def from_settings(cls, settings: ControllerSettings) -> ArtifactStore:
        """Raises ConfigError when the configured S3 bucket is missing or refused."""
        uploads = settings.blobs.uploads_dir or settings.data_dir / "uploads"
        return cls(uploads, open_blob_store(settings))

    def upload_path(self, upload_id: str) -> Path:
        return self.uploads / upload_id

    @staticmethod
    def image_key(digest: str) -> str:
        return f"images/{digest}"

    @staticmethod
    def overlay_key(overlay_id: str) -> str:
        return f"overlays/{overlay_id}"

    @staticmethod
    def package_key(version: str) -> str:
        return f"agent-packages/{version}.whl"

    def held_bytes(self, upload_id: str) -> int | None:
        """How many bytes of the upload this replica holds (None: not its upload)."""
        try:
            return self.upload_path(upload_id).stat().st_size
        except FileNotFoundError:
            return None

    def create_upload_file(self, upload_id: str) -> Path:
        self.uploads.mkdir(parents=True, exist_ok=True)
        path = self.upload_path(upload_id)
        path.touch(exist_ok=True)
        return path

    def free_bytes(self) -> int:
        """Free space where uploads are assembled."""
        self.uploads.mkdir(parents=True, exist_ok=True)
        st = os.statvfs(self.uploads)
        return st.f_bavail * st.f_frsize

    def publish(self, src: Path, key: str) -> None:
        """Put a checked upload into the blob store, whole, and remove it locally.

        A source already gone while the blob exists means a concurrent completion
        of the same upload published it first: the same bytes, so nothing to do.

        Raises:
            BlobStoreError: the store failed; the upload is kept for a retry.
        """
        try:
            self.blobs.put(key, src)
        except FileNotFoundError:
            if self.blobs.exists(key):
                return
            raise
        discard(src)


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
        return file_blake3(path)
    try:
        return base_digest(path).hex()
    finally:
        # base_digest caches an index beside the image: not wanted in uploads/.
        with contextlib.suppress(OSError):
            index_path(path).unlink()


def discard(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
