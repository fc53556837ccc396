"""Fetching artifacts from the controller by HTTP range: resumable downloads and a ByteSource.

Blobs live at ``GET {controller}/v1/images/{digest}/blob`` and
``GET {controller}/v1/overlays/{id}/blob``, read with the site credential. A
download appends to ``<name>.part`` and persists its offset (after an fsync) every
few MiB, so a cut link or an agent restart continues where it stopped; the bytes
are verified (base images: :func:`cloudlet.synthesis.base_digest`; overlays: every
digest, root included) before the file is renamed into place.

:class:`HttpRangeSource` is the synthesis library's ByteSource over such a URL;
with ``tee`` it also keeps every range it reads in a local file, and
:meth:`HttpRangeSource.fill_gaps` then completes that file, so an overlay fetched
once for synthesis is cached for later, offline starts.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import os
import re
import ssl
import threading
from collections.abc import Callable
from pathlib import Path

import httpx

from cloudlet.errors import (
    AuthError,
    ControllerUnreachableError,
    NotFoundError,
    OverlayFormatError,
    SyncError,
)
from cloudlet.schemas.artifacts import ArtifactKind

#: Bytes between two persisted offsets of a download.
PERSIST_EVERY = 4 << 20
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


def blob_url(base_url: str, kind: ArtifactKind, artifact_id: str) -> str:
    """The controller URL of an artifact's bytes."""
    noun = "images" if kind is ArtifactKind.IMAGE else "overlays"
    return f"{base_url.rstrip('/')}/v1/{noun}/{artifact_id}/blob"


def check_status(response: httpx.Response, what: str) -> None:
    """Map an error answer to a domain error (the body is not read)."""
    code = response.status_code
    if code < 400:
        return
    message = f"controller answered {code} to GET {what}"
    if code in (401, 403):
        raise AuthError(message)
    if code == 404:
        raise NotFoundError(message)
    if code >= 500 or code in (408, 429):
        raise ControllerUnreachableError(message)
    raise SyncError(message)


def parse_content_range(value: str | None) -> tuple[int, int, int | None]:
    """``(first, last, total)`` of a ``Content-Range`` header (total None if ``*``)."""
    match = _CONTENT_RANGE.fullmatch((value or "").strip())
    if match is None:
        raise SyncError(f"bad Content-Range from the controller: {value!r}")
    first, last, total = match.groups()
    return int(first), int(last), None if total == "*" else int(total)


async def download(
    http: httpx.AsyncClient,
    url: str,
    credential: str,
    part: Path,
    offset: int,
    *,
    on_progress: Callable[[int, int | None], None],
) -> int:
    """Fetch ``url`` into ``part`` from ``offset`` on; return the total size.

    ``on_progress(fetched, total)`` is called after each fsync, with the number of
    leading bytes of ``part`` that are durable: persist it and pass it back as
    ``offset`` to resume. A server that ignores Range starts the file over.

    Raises:
        ControllerUnreachableError: network failure or 5xx (what arrived is kept).
        AuthError, NotFoundError, SyncError: the controller refused.
    """
    part.parent.mkdir(parents=True, exist_ok=True)
    if not part.exists():
        offset = 0
    with open(part, "ab"):  # create it; a longer file was written past its last fsync
        pass
    if part.stat().st_size != offset:
        os.truncate(part, min(offset, part.stat().st_size))
        offset = min(offset, part.stat().st_size)
    headers = {"Authorization": f"Bearer {credential}"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    total: int | None = None
    try:
        async with http.stream("GET", url, headers=headers) as response:
            if response.status_code == 416 and offset:
                # Nothing after offset ("bytes */TOTAL"): whole already, or a changed blob.
                size = response.headers.get("content-range", "*").rsplit("/", 1)[-1]
                if size.isdigit() and int(size) == offset:
                    return offset
                os.truncate(part, 0)
                on_progress(0, None)
                raise ControllerUnreachableError(f"GET {url}: range not satisfiable; starting over")
            check_status(response, url)
            if response.status_code == 206:
                first, _, total = parse_content_range(response.headers.get("content-range"))
                if first != offset:
                    raise SyncError(f"GET {url}: asked for bytes from {offset}, got {first}")
            else:  # 200: the whole blob
                if offset:
                    os.truncate(part, 0)
                    offset = 0
                length = response.headers.get("content-length")
                total = int(length) if length is not None else None
            on_progress(offset, total)
            durable = offset
            with open(part, "r+b") as f:
                f.seek(offset)
                try:
                    async for chunk in response.aiter_bytes():
                        # Zeros become holes: a sparse base copies in a fraction of
                        # the time when an instance's disk is synthesized from it.
                        if chunk.count(0) == len(chunk):
                            f.seek(len(chunk), os.SEEK_CUR)
                        else:
                            f.write(chunk)
                        offset += len(chunk)
                        if offset - durable >= PERSIST_EVERY:
                            f.flush()
                            await asyncio.to_thread(os.fsync, f.fileno())
                            durable = offset
                            on_progress(durable, total)
                finally:
                    if os.fstat(f.fileno()).st_size < offset:
                        f.truncate(offset)  # a trailing hole still counts as received
                    f.flush()
                    os.fsync(f.fileno())
                    if offset != durable:
                        on_progress(offset, total)
    except httpx.HTTPError as exc:
        raise ControllerUnreachableError(f"GET {url}: {type(exc).__name__}: {exc}") from exc
    if total is not None and offset < total:
        raise ControllerUnreachableError(f"GET {url}: ended at byte {offset} of {total}")
    return offset if total is None else total


class HttpRangeSource:
    """A :class:`cloudlet.synthesis.ByteSource` over an HTTP URL that honours Range.

    Safe to call from several threads. Each read is one ranged GET, retried a few
    times on network failure. With ``tee``, every range read is also written at its
    offset into that (sparse) file.
    """

    def __init__(
        self,
        url: str,
        credential: str,
        *,
        tee: Path | None = None,
        timeout: float = 30.0,
        retries: int = 3,
        transport: httpx.BaseTransport | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.url = url
        self.retries = retries
        self.bytes_fetched = 0
        self._http = httpx.Client(
            timeout=timeout,
            follow_redirects=True,
            headers={"Authorization": f"Bearer {credential}"},
            transport=transport,
            verify=verify,
        )
        self._lock = threading.Lock()
        self._size: int | None = None
        self.tee = tee
        self._tee_fd: int | None = None
        #: Sorted, disjoint [start, end) ranges of ``tee`` that hold fetched bytes.
        self._have: list[tuple[int, int]] = []
        if tee is not None:
            tee.parent.mkdir(parents=True, exist_ok=True)
            self._tee_fd = os.open(tee, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)

    @property
    def size(self) -> int | None:
        """The blob's length once a response has told it, else None."""
        return self._size

    def read_range(self, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""
        last_error: Exception | None = None
        for _ in range(self.retries + 1):
            try:
                return self._get(offset, length)
            except (httpx.TransportError, ControllerUnreachableError) as exc:
                last_error = exc
        raise ControllerUnreachableError(
            f"GET {self.url} bytes {offset}+{length}: {last_error}"
        ) from last_error

    def _get(self, offset: int, length: int) -> bytes:
        headers = {"Range": f"bytes={offset}-{offset + length - 1}"}
        try:
            response = self._http.get(self.url, headers=headers)
        except httpx.TransportError:
            raise
        except httpx.HTTPError as exc:
            raise ControllerUnreachableError(f"GET {self.url}: {exc}") from exc
        if response.status_code == 416:
            raise OverlayFormatError(f"truncated overlay: {self.url} ends before {offset}")
        check_status(response, self.url)
        data = response.content
        if response.status_code == 206:
            first, _, total = parse_content_range(response.headers.get("content-range"))
            if first != offset:
                raise SyncError(f"GET {self.url}: asked for bytes from {offset}, got {first}")
        else:  # a server without ranges sent everything
            total = len(data)
            data = data[offset : offset + length]
        with self._lock:
            if total is not None:
                self._size = total
            self.bytes_fetched += len(data)
        if len(data) < length:
            raise OverlayFormatError(f"truncated overlay: {self.url} ends early")
        self._keep(offset, data)
        return data

    def _keep(self, offset: int, data: bytes) -> None:
        if self._tee_fd is None:
            return
        os.pwrite(self._tee_fd, data, offset)
        with self._lock:
            self._have = _merge(self._have, (offset, offset + len(data)))

    def gaps(self) -> list[tuple[int, int]]:
        """The [start, end) ranges of the blob not read yet."""
        total = self._size or 0
        out, pos = [], 0
        with self._lock:
            for start, end in self._have:
                if start > pos:
                    out.append((pos, start))
                pos = max(pos, end)
        if pos < total:
            out.append((pos, total))
        return out

    def fill_gaps(self, max_request: int = 8 << 20) -> int:
        """Read whatever was not read yet, so ``tee`` holds the whole blob; returns bytes."""
        if self._size is None:
            self.read_range(0, 1)
        fetched = 0
        for start, end in self.gaps():
            for pos in range(start, end, max_request):
                n = min(max_request, end - pos)
                self.read_range(pos, n)
                fetched += n
        assert self.tee is not None and self._tee_fd is not None
        os.ftruncate(self._tee_fd, self._size or 0)
        os.fsync(self._tee_fd)
        return fetched

    def close(self) -> None:
        self._http.close()
        if self._tee_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._tee_fd)
            self._tee_fd = None

    def __enter__(self) -> HttpRangeSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _merge(ranges: list[tuple[int, int]], new: tuple[int, int]) -> list[tuple[int, int]]:
    """Insert ``new`` into sorted disjoint ranges, merging what touches it."""
    i = bisect.bisect_left(ranges, new)
    ranges = [*ranges[:i], new, *ranges[i:]]
    merged: list[tuple[int, int]] = []
    for start, end in ranges:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


__all__ = [
    "PERSIST_EVERY",
    "HttpRangeSource",
    "blob_url",
    "download",
    "parse_content_range",
]
