"""A lane past the framework for the agents' two hot calls: the report and the
desired-state pull.

Every agent makes both every interval, so at 10,000 sites they are nearly all of the
controller's requests, and with FastAPI most of their cost was the framework's:
matching the path against every route, resolving dependencies, validating the
query, parsing the body twice (JSON, then the model) and validating the answer
again. Here a well-formed request from a known site is answered directly, by the
same functions the routes call (``api.agent``). Anything else (a query or body that
does not validate, a missing or unknown credential, another method) goes on to the
FastAPI route, which answers it in the usual problem+json; the routes also remain
what the OpenAPI document describes.
"""

from __future__ import annotations

import logging
import re
from typing import Any, NamedTuple

import orjson
from pydantic import ValidationError

from cloudlet.controller.api import agent, problems
from cloudlet.controller.state import ControllerState
from cloudlet.errors import AuthError
from cloudlet.schemas import AgentReport
from cloudlet.schemas.common import PROBLEM_MEDIA_TYPE, problem_body
from cloudlet.web import MIB, read_bounded, replay_body

log = logging.getLogger(__name__)

DESIRED = "/v1/agent/desired"
REPORT = "/v1/agent/report"
_JSON = [(b"content-type", b"application/json")]
#: The query of a pull the lane takes; anything else is the route's to judge.
_PULL_QUERY = re.compile(rb"since=(\d{1,18})&wait=(\d{1,3}(?:\.\d{1,6})?)")
_MAX_WAIT_S = 300.0
REPORT_MAX_BYTES = 8 * MIB


class _Route(NamedTuple):
    """What the metrics middleware reads of a matched route: its template."""

    path: str


_DESIRED_ROUTE, _REPORT_ROUTE = _Route(DESIRED), _Route(REPORT)


class AgentLane:
    """Pure ASGI, innermost of the middlewares (the traffic and metrics counters see
    what it answers, by the route's template)."""

    def __init__(self, app: Any, state: ControllerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path")
        if scope["type"] == "http":
            if path == DESIRED and scope["method"] == "GET":
                await self._pull(scope, receive, send)
                return
            if path == REPORT and scope["method"] == "POST":
                await self._report(scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _pull(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        query = _PULL_QUERY.fullmatch(scope["query_string"])
        wait = float(query[2]) if query else _MAX_WAIT_S + 1
        site = await self._site(scope) if wait <= _MAX_WAIT_S else None
        if query is None or site is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = _DESIRED_ROUTE
        try:
            doc = await agent.pull_desired(self.state, site, int(query[1]), wait)
        except Exception:
            await _internal_error(scope, send)
            return
        if doc is None:
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})
        else:
            await _send_json(send, 200, doc)

    async def _report(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        # BodyGuard, further out, has bounded the body already.
        body = await read_bounded(receive, REPORT_MAX_BYTES) or b""
        replay = replay_body(body, receive)
        if _header(scope, b"content-type").split(b";")[0].strip() != b"application/json":
            await self.app(scope, replay, send)
            return
        try:
            report = AgentReport.model_validate_json(body)
        except ValidationError:
            await self.app(scope, replay, send)
            return
        site = await self._site(scope)
        if site is None:
            await self.app(scope, replay, send)
            return
        scope["route"] = _REPORT_ROUTE
        try:
            ack = await agent.store_report(self.state, site, report)
        except Exception:
            await _internal_error(scope, send)
            return
        await _send_json(send, 200, ack)

    async def _site(self, scope: dict[str, Any]) -> Any:
        authorization = _header(scope, b"authorization").decode("latin-1") or None
        try:
            return await agent.authenticate(self.state, authorization, scope)
        except AuthError:
            return None


def _header(scope: dict[str, Any], name: bytes) -> bytes:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return b""


async def _send_json(send: Any, status: int, body: bytes, media: bytes = b"") -> None:
    headers = [(b"content-type", media)] if media else _JSON
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _internal_error(scope: dict[str, Any], send: Any) -> None:
    log.exception("unhandled error on %s %s", scope["method"], scope["path"])
    body = problem_body(*problems.INTERNAL, scope["path"])
    await _send_json(send, 500, orjson.dumps(body), PROBLEM_MEDIA_TYPE.encode())
