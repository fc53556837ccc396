"""Request bodies are bounded and checked before any handler, or authentication, runs.

Pure ASGI middleware. A declared ``Content-Length`` over the route's bound is
refused at once, unread; a body without one is read only up to the bound. JSON
bodies (the only kind but upload chunks) are buffered, which the bound keeps
small, and parsed once strictly: invalid UTF-8, ``NaN`` and ``Infinity`` are
malformed JSON here, answered 400 before FastAPI's lenient parser sees them.
Upload chunks stream through, counted.

No text may hold a NUL (U+0000): PostgreSQL cannot store one, so a path, query or
JSON body carrying one is refused (422) here rather than failing in the database.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from cloudlet.errors import TooLargeError
from cloudlet.schemas.common import PROBLEM_MEDIA_TYPE, problem_body

KIB = 1024
MIB = 1024 * KIB


@dataclass(frozen=True)
class StreamedRoute:
    """Requests whose body is raw bytes streamed to the handler, counted, not buffered."""

    method: str
    path: re.Pattern[str]
    limit: int


@dataclass(frozen=True)
class BodyLimits:
    """Largest bodies accepted, in bytes: ``json`` unless ``paths`` names another
    bound for the exact path, or a ``streamed`` route matches."""

    json: int = 1 * MIB
    paths: dict[str, int] = field(default_factory=dict)
    streamed: tuple[StreamedRoute, ...] = ()

    def for_route(self, method: str, path: str) -> tuple[int, bool]:
        """The bound for a request, and whether its body is buffered (and checked
        if it says it is JSON) rather than streamed."""
        for route in self.streamed:
            if method == route.method and route.path.match(path):
                return route.limit, False
        return self.paths.get(path, self.json), True


_NO_BODY_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


class BodyGuard:
    def __init__(self, app: Any, limits: BodyLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        if "\x00" in path or b"%00" in scope.get("query_string", b""):
            await _refuse(send, path, 422, "invalid-input", "Invalid input", _NUL)
            return
        limit, is_json = self.limits.for_route(method, path)
        headers = dict(scope["headers"])
        declared = _content_length(headers.get(b"content-length"))
        if declared is not None and declared > limit:
            await _refuse(send, path, 413, "too-large", "Too large", _too_large(limit))
            return
        if method in _NO_BODY_METHODS and not declared:
            await self.app(scope, receive, send)
            return
        if not is_json:
            await self.app(scope, _counting(receive, limit), send)
            return
        body = await read_bounded(receive, limit)
        if body is None:
            await _refuse(send, path, 413, "too-large", "Too large", _too_large(limit))
            return
        if body and _is_json_type(headers.get(b"content-type")):
            try:
                orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                detail = f"the body is not valid JSON: {exc}"
                await _refuse(send, path, 400, "malformed-json", "Malformed JSON", detail[:300])
                return
            if _has_nul_escape(body):
                await _refuse(send, path, 422, "invalid-input", "Invalid input", _NUL)
                return
        await self.app(scope, replay_body(body, receive), send)


_NUL = "text may not contain NUL characters (U+0000)"


def _has_nul_escape(body: bytes) -> bool:
    """Whether valid JSON holds a \\u0000 escape (a raw NUL is not valid JSON), and not
    a literal backslash followed by "u0000"."""
    at = body.find(b"\\u0000")
    while at != -1:
        backslashes = len(body[:at]) - len(body[:at].rstrip(b"\\"))
        if backslashes % 2 == 0:
            return True
        at = body.find(b"\\u0000", at + 1)
    return False


def _content_length(value: bytes | None) -> int | None:
    if value is None or not value.isdigit():
        return None
    return int(value)


def _is_json_type(value: bytes | None) -> bool:
    # FastAPI parses a body as JSON when it declares no type, or a JSON one.
    if not value:
        return True
    media = value.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or media.endswith(b"+json")


def _too_large(limit: int) -> str:
    return f"the body is larger than this endpoint's limit of {limit} bytes"


async def read_bounded(receive: Any, limit: int) -> bytes | None:
    """The whole body, or None as soon as it passes ``limit``."""
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break  # a disconnect: what arrived is all there is
        piece = message.get("body", b"")
        size += len(piece)
        if size > limit:
            return None
        parts.append(piece)
        if not message.get("more_body", False):
            break
    return b"".join(parts)


def replay_body(body: bytes, receive: Any) -> Any:
    """An ASGI receive that gives ``body`` (read already) first, then what comes next."""
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _counting(receive: Any, limit: int) -> Any:
    seen = 0

    async def counting() -> dict[str, Any]:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                # Handlers streaming the body see an error, never the excess.
                raise TooLargeError(_too_large(limit))
        return message

    return counting


async def _refuse(send: Any, path: str, status: int, slug: str, title: str, detail: str) -> None:
    body = orjson.dumps(problem_body(status, slug, title, detail, path))
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
