"""Serving a stored blob over HTTP, whole or one byte range, from any blob store.

The rules (RFC 9110, section 14): ``Range: bytes=A-B``, ``A-`` or ``-N`` answers 206
with ``Content-Range``; a range starting at or past the end answers 416 with
``Content-Range: bytes */SIZE``; a Range the server may ignore (another unit, bad
syntax, several ranges) or an ``If-Range`` that is not the current strong ETag
answers 200 with the whole blob. The ETag is the artifact's digest, so it holds
across restarts, replicas and backends, and an agent's resumed fetch can trust it.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable

from fastapi.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from cloudlet.controller.blobs import BlobStore, BlobStream

OCTET = "application/octet-stream"
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


class Unsatisfiable(Exception):
    """The range starts at or past the end of the blob."""


class BlobResponse(StreamingResponse):
    """A blob's bytes; the route's response_class, for the OpenAPI document."""

    media_type = OCTET


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The ``[start, end)`` that a Range header asks of a blob of `size` bytes, or
    None to send it whole.

    Raises:
        Unsatisfiable: no byte of the range is in the blob.
    """
    match = _RANGE.fullmatch((header or "").replace(" ", ""))
    if match is None:
        return None
    first, last = match.groups()
    if not first:
        if not last:
            return None
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise Unsatisfiable
        return max(size - suffix, 0), size
    start = int(first)
    if last and int(last) < start:
        return None  # invalid, so ignored
    if start >= size:
        raise Unsatisfiable
    return start, min(int(last) + 1, size) if last else size


def blob_response(
    request: Request,
    blobs: BlobStore,
    key: str,
    size: int,
    etag: str,
    on_sent: Callable[[int], None] | None = None,
) -> Response:
    """Answer a GET or HEAD of the blob under `key` (`size` bytes, ETag `etag`).

    Call it from a worker thread: it opens the blob (one request to S3) before the
    response starts, so that a missing blob is a 404, not a cut-off body.
    ``on_sent`` is told the size of each chunk once the server has taken it for the
    connection (a transfer cut short counts what went out before the cut).

    Raises:
        NotFoundError: the blob is missing from the store.
        BlobStoreError: the store failed.
    """
    headers = {"etag": f'"{etag}"', "accept-ranges": "bytes"}
    wanted: tuple[int, int] | None = None
    if_range = request.headers.get("if-range")
    if if_range is None or if_range == headers["etag"]:
        try:
            wanted = parse_range(request.headers.get("range"), size)
        except Unsatisfiable:
            headers["content-range"] = f"bytes */{size}"
            return Response(status_code=416, headers=headers, media_type=OCTET)
    start, end = wanted or (0, size)
    headers["content-length"] = str(end - start)
    if wanted is not None:
        headers["content-range"] = f"bytes {start}-{end - 1}/{size}"
    status = 206 if wanted is not None else 200
    if request.method == "HEAD" or start == end:
        return Response(status_code=status, headers=headers, media_type=OCTET)
    stream = blobs.open_range(key, start, end)
    return BlobResponse(_chunks(stream, on_sent), status_code=status, headers=headers)


async def _chunks(
    stream: BlobStream, on_sent: Callable[[int], None] | None = None
) -> AsyncIterator[bytes]:
    try:
        while (chunk := await run_in_threadpool(next, stream, None)) is not None:
            yield chunk
            # Back here once the response has sent the chunk (the ASGI send returned).
            if on_sent is not None:
                on_sent(len(chunk))
    finally:
        # Not in a thread: a cancelled transfer must still release the file or the
        # S3 connection, and no read is running (a thread's read is waited for).
        stream.close()
