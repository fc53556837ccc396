"""A stub of the controller's blob endpoints (HTTP Range), served by uvicorn in a thread.

``GET /v1/images/{digest}/blob`` and ``GET /v1/overlays/{id}/blob`` answer 206 for a
``Range: bytes=a-b`` or ``bytes=a-`` request and 200 otherwise, with the site
credential checked. ``cut_next`` makes the next answer stop after that many body
bytes (the connection drops, as on a cut link); ``offline`` answers 503.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

CREDENTIAL = "site-credential-xyz"
_RANGE = re.compile(r"bytes=(\d+)-(\d*)")


class BlobServer:
    """Blobs by (noun, id); every request is logged as (path, Range header or None)."""

    def __init__(self, credential: str = CREDENTIAL) -> None:
        self.credential = credential
        self.blobs: dict[tuple[str, str], bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.cut_next: int | None = None
        self.offline = False
        #: False: answer every request with the whole blob (200), as a plain server would.
        self.ranges = True
        self.lock = threading.Lock()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        app = Starlette(routes=[Route("/v1/{noun}/{aid}/blob", self.handle)])
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_config=None, lifespan="off", ws="none"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add_image(self, digest: str, data: bytes | Path) -> None:
        self.blobs[("images", digest)] = data if isinstance(data, bytes) else data.read_bytes()

    def add_overlay(self, overlay_id: str, data: bytes | Path) -> None:
        self.blobs[("overlays", overlay_id)] = (
            data if isinstance(data, bytes) else data.read_bytes()
        )

    async def handle(self, request: Request) -> Response:
        """The blob endpoint; mount it into another app to serve blobs from there."""
        noun, aid = request.path_params["noun"], request.path_params["aid"]
        rng = request.headers.get("range")
        with self.lock:
            self.requests.append((request.url.path, rng))
            cut, self.cut_next = self.cut_next, None
        if self.offline:
            return Response("offline", status_code=503)
        if request.headers.get("authorization") != f"Bearer {self.credential}":
            return Response("bad credential", status_code=401)
        data = self.blobs.get((noun, aid))
        if data is None:
            return Response("no such blob", status_code=404)
        total = len(data)
        status, headers = 200, {"accept-ranges": "bytes"}
        first, last = 0, total - 1
        if self.ranges and rng and (m := _RANGE.fullmatch(rng.strip())):
            first = int(m.group(1))
            last = min(int(m.group(2)), total - 1) if m.group(2) else total - 1
            if first >= total:
                return Response(status_code=416, headers={"content-range": f"bytes */{total}"})
            status = 206
            headers["content-range"] = f"bytes {first}-{last}/{total}"
        body = data[first : last + 1]
        headers["content-length"] = str(len(body))

        async def stream() -> AsyncIterator[bytes]:
            if cut is None:
                yield body
                return
            yield body[:cut]
            raise ConnectionResetError("stub blob server: link cut")

        return StreamingResponse(stream(), status_code=status, headers=headers)

    def __enter__(self) -> BlobServer:
        self.thread.start()
        for _ in range(500):
            if self.server.started:
                return self
            time.sleep(0.01)
        raise RuntimeError("stub blob server did not start")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
