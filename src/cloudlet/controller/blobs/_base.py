"""The small interface every artifact store backend implements."""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import Protocol

#: Bytes handed out per read of a blob (one thread hop each when served over HTTP).
READ_CHUNK = 1 << 20

#: Bytes of a blob, streamed; ``close()`` releases the file or connection early.
BlobStream = Generator[bytes, None, None]


class BlobStore(Protocol):
    """Published, immutable blobs under ``/``-separated keys such as ``images/<digest>``.

    Keys are written once and never changed in place (artifacts are content-addressed),
    so a reader never sees a blob change under it. Backend failures are raised as
    :class:`~cloudlet.errors.BlobStoreError`, keeping the cause.
    """

    def put(self, key: str, path: Path) -> None:
        """Store the finished local file at `path` under `key`, whole or not at all.

        The file may be moved rather than copied: the caller must not use `path`
        afterwards (it may still exist, and is the caller's to remove).

        Raises:
            FileNotFoundError: `path` does not exist.
            BlobStoreError: the backend failed; nothing is stored under `key`.
        """
        ...

    def open_range(self, key: str, start: int, end: int) -> BlobStream:
        """The bytes ``[start, end)`` of the blob, in chunks of up to ``READ_CHUNK``.

        The blob is opened before this returns, so a missing one raises here and not
        in the middle of a response.

        Raises:
            NotFoundError: no blob under `key`.
            BlobStoreError: the backend failed.
        """
        ...

    def size(self, key: str) -> int | None:
        """The blob's size in bytes, or None if there is no blob under `key`."""
        ...

    def exists(self, key: str) -> bool:
        """Whether a blob is stored under `key`."""
        ...

    def delete(self, key: str) -> None:
        """Remove the blob; removing a missing one succeeds."""
        ...
