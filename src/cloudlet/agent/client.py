"""The agent's HTTP client for the controller's ``/v1/agent`` API.

Failures become domain errors at this boundary: a 401/403 is an
:class:`~cloudlet.errors.AuthError`, a network failure or a 5xx a
:class:`~cloudlet.errors.ControllerUnreachableError` (retry later), any other
error answer a :class:`~cloudlet.errors.SyncError` carrying the problem's detail.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from cloudlet.errors import AuthError, ConfigError, ControllerUnreachableError, SyncError
from cloudlet.schemas import (
    AgentReport,
    DesiredStateDoc,
    EnrollRequest,
    EnrollResponse,
    ReportAck,
)
from cloudlet.schemas.mobility import HandoffReady, HandoffSent
from cloudlet.schemas.sync import CertificateRenewal, SiteCertificates

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)

#: Extra seconds a long-poll may take beyond the wait asked of the controller.
_POLL_SLACK_S = 10.0
#: Bytes read or written at a time when a checkpoint streams.
_STREAM_CHUNK = 1 << 20


def link_socket_options(dead_after_s: float) -> list[tuple[int, int, int]]:
    """TCP options under which a connection over a link gone silent fails within about
    ``dead_after_s``, both while data waits for an acknowledgement (TCP_USER_TIMEOUT)
    and while it is idle in a long poll (keepalive probes).

    Without them a request in flight over a cut link hangs until its own timeout, and
    after the link returns it waits for TCP's next retransmission, which backs off
    exponentially: the longer the cut, the longer the site takes to come back.
    Failing fast hands the agent's probe a fresh connection to find the controller.
    """
    idle = max(1, int(dead_after_s / 4))
    options = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    for name, value in (
        ("TCP_KEEPIDLE", idle),
        ("TCP_KEEPINTVL", idle),
        ("TCP_KEEPCNT", 3),
        ("TCP_USER_TIMEOUT", int(dead_after_s * 1000)),
    ):
        if hasattr(socket, name):  # Linux has them all; elsewhere keepalive alone
            options.append((socket.IPPROTO_TCP, getattr(socket, name), value))
    return options


def _header_bytes(headers: httpx.Headers) -> int:
    return sum(len(k) + len(v) + 4 for k, v in headers.raw)


def controller_urls(value: str) -> list[str]:
    """The controller's replicas, from a URL or a comma-separated list of them."""
    urls = [u.strip().rstrip("/") for u in value.split(",") if u.strip()]
    if not urls:
        raise ConfigError(f"no controller URL in {value!r}")
    return urls


class ControllerClient:
    """Calls the controller on behalf of one site; counts the bytes it exchanges.

    Given several replicas' URLs, it sends to one until that one fails to answer
    (no connection, or one that broke), then to the next.
    """

    def __init__(
        self,
        base_url: str,
        *,
        credential: str | None = None,
        timeout: float = 15.0,
        transport: httpx.AsyncBaseTransport | None = None,
        link_dead_after_s: float | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.base_urls = controller_urls(base_url)
        self._current = 0
        self.credential = credential
        self.bytes_sent = 0
        self.bytes_received = 0
        self._timeout = timeout
        self._transport = transport
        self._link_dead_after_s = link_dead_after_s
        self.verify = verify
        self._http = self._new_http()

    def _new_http(self) -> httpx.AsyncClient:
        transport = self._transport
        if transport is None and self._link_dead_after_s is not None:
            transport = httpx.AsyncHTTPTransport(
                socket_options=link_socket_options(self._link_dead_after_s), verify=self.verify
            )
        return httpx.AsyncClient(timeout=self._timeout, transport=transport, verify=self.verify)

    def reconnect(self) -> None:
        """Use new connections from now on (after a certificate renewal: a kept-alive
        connection goes on presenting the old certificate). The old ones close once the
        requests in flight on them (a long poll) are done."""
        old, self._http = self._http, self._new_http()
        task = asyncio.get_running_loop().create_task(_close_later(old, _POLL_SLACK_S + 300))
        self._closing = task  # referenced, so the task is not collected early

    @property
    def base_url(self) -> str:
        """The controller replica requests go to now."""
        return self.base_urls[self._current]

    def _fail_over(self, tried: int) -> None:
        """Replica ``tried`` did not answer: the next request tries the next one. Only
        the first of the requests that were in flight to it moves on (the others
        would otherwise move back to it)."""
        if len(self.base_urls) > 1 and self._current == tried:
            self._current = (self._current + 1) % len(self.base_urls)
            log.info("trying the controller at %s next", self.base_url)

    async def aclose(self) -> None:
        await self._http.aclose()
        closing = getattr(self, "_closing", None)
        if closing is not None:
            closing.cancel()

    async def _call(
        self,
        method: str,
        path: str,
        *,
        body: BaseModel | None = None,
        params: dict[str, str | int] | None = None,
        timeout: float | None = None,
        auth: bool = True,
        raw: bytes | None = None,
        stream: tuple[AsyncIterator[bytes], int] | None = None,
    ) -> httpx.Response:
        headers = self._auth() if auth else {}
        content: bytes | AsyncIterator[bytes] | None = None
        sent = 0
        if body is not None:
            content = body.model_dump_json(exclude_none=True).encode()
            headers["Content-Type"] = "application/json"
        elif raw is not None:
            content = raw
            headers["Content-Type"] = "application/octet-stream"
        elif stream is not None:
            content, length = stream
            headers["Content-Type"] = "application/octet-stream"
            headers["Content-Length"] = str(length)
            sent = length
        if isinstance(content, bytes):
            sent = len(content)
        tried = self._current
        url = f"{self.base_urls[tried]}{path}"
        request = self._http.build_request(
            method,
            url,
            content=content,
            params=params,
            headers=headers,
            timeout=timeout if timeout is not None else self._timeout,
        )
        self.bytes_sent += sent + _header_bytes(request.headers)
        try:
            response = await self._http.send(request)
        except httpx.HTTPError as exc:
            self._fail_over(tried)
            raise ControllerUnreachableError(
                f"{method} {url}: {type(exc).__name__}: {exc}"
            ) from exc
        self.bytes_received += len(response.content) + _header_bytes(response.headers)
        if response.status_code >= 400:
            self._raise_for(response, method, path, tried)
        return response

    def _auth(self) -> dict[str, str]:
        if not self.credential:
            raise AuthError("this site has no credential; enroll it first")
        return {"Authorization": f"Bearer {self.credential}"}

    def _raise_for(self, response: httpx.Response, method: str, path: str, tried: int) -> None:
        """Raise the domain error for an error answer."""
        detail = _problem_detail(response)
        message = f"controller answered {response.status_code} to {method} {path}: {detail}"
        if response.status_code in (401, 403):
            raise AuthError(message)
        if response.status_code in (502, 503, 504):
            self._fail_over(tried)  # a proxy, or a replica, that cannot serve now
        if response.status_code >= 500 or response.status_code in (408, 429):
            raise ControllerUnreachableError(message)
        raise SyncError(message)

    async def probe(self, timeout: float = 2.0) -> bool:
        """Whether the controller answers its health check now (no credential sent)."""
        tried = self._current
        try:
            response = await self._http.get(f"{self.base_urls[tried]}/healthz", timeout=timeout)
        except httpx.HTTPError:
            self._fail_over(tried)
            return False
        return response.status_code == 200

    async def enroll(self, request: EnrollRequest) -> EnrollResponse:
        """Trade a one-time join token for the site's credential.

        Raises:
            AuthError: the token is unknown, used or expired.
        """
        response = await self._call("POST", "/v1/agent/enroll", body=request, auth=False)
        return _parse(EnrollResponse, response)

    async def renew(self, request: CertificateRenewal) -> SiteCertificates:
        """New certificates for this site (authenticated by its current ones).

        Raises:
            AuthError: refused: the certificate expired or was revoked (re-join).
        """
        response = await self._call("POST", "/v1/agent/certificate", body=request)
        return _parse(SiteCertificates, response)

    async def pull(self, since: int, wait: float) -> DesiredStateDoc | None:
        """Long-poll for desired state after revision ``since``; None if nothing changed."""
        response = await self._call(
            "GET",
            "/v1/agent/desired",
            params={"since": since, "wait": _fmt(wait)},
            timeout=wait + _POLL_SLACK_S,
        )
        if response.status_code == 204:
            return None
        return _parse(DesiredStateDoc, response)

    async def report(self, report: AgentReport) -> ReportAck:
        """Send actual state and outbox events; the answer acknowledges stored events."""
        response = await self._call("POST", "/v1/agent/report", body=report)
        return _parse(ReportAck, response)

    async def send_handoff_state(self, handoff_id: str, archive: bytes) -> None:
        """Upload the state a handoff moves (the source's side).

        Raises:
            SyncError: the handoff no longer waits for state (it failed or moved on).
        """
        await self._call("PUT", f"/v1/agent/handoffs/{handoff_id}/state", raw=archive, timeout=300)

    async def fetch_handoff_state(self, handoff_id: str) -> bytes:
        """Download the state a handoff moves (the destination's side)."""
        response = await self._call("GET", f"/v1/agent/handoffs/{handoff_id}/state", timeout=300)
        return response.content

    async def upload_checkpoint(
        self, checkpoint_id: str, path: Path, params: dict[str, str | int]
    ) -> None:
        """Upload a checkpoint file (streamed; ``params``: instance, epoch, kind, ...).

        Raises:
            SyncError: refused: the instance moved on (a stale epoch) or is gone.
        """

        async def body() -> AsyncIterator[bytes]:
            with path.open("rb") as f:
                while chunk := await asyncio.to_thread(f.read, _STREAM_CHUNK):
                    yield chunk

        size = path.stat().st_size
        await self._call(
            "PUT",
            f"/v1/agent/checkpoints/{checkpoint_id}",
            params=params,
            stream=(body(), size),
            timeout=600,
        )

    async def fetch_checkpoint(self, checkpoint_id: str, out: Path) -> int:
        """Download a checkpoint into ``out``; returns its size.

        Raises:
            SyncError: no such checkpoint for this site.
        """
        headers = self._auth()
        tried = self._current
        url = f"{self.base_urls[tried]}/v1/agent/checkpoints/{checkpoint_id}/blob"
        size = 0
        try:
            async with self._http.stream("GET", url, headers=headers, timeout=600) as response:
                if response.status_code >= 400:
                    await response.aread()
                    self._raise_for(response, "GET", url, tried)
                with out.open("wb") as f:
                    async for chunk in response.aiter_bytes(_STREAM_CHUNK):
                        await asyncio.to_thread(f.write, chunk)
                        size += len(chunk)
        except httpx.HTTPError as exc:
            self._fail_over(tried)
            raise ControllerUnreachableError(f"GET {url}: {type(exc).__name__}: {exc}") from exc
        finally:
            self.bytes_received += size
        return size

    async def handoff_ready(self, handoff_id: str, address: str) -> None:
        """vm, destination: say where it listens for the VM."""
        await self._call(
            "POST", f"/v1/agent/handoffs/{handoff_id}/ready", body=HandoffReady(address=address)
        )

    async def handoff_sent(self, handoff_id: str, sent: HandoffSent) -> None:
        """vm, source: the VM runs at the destination now."""
        await self._call("POST", f"/v1/agent/handoffs/{handoff_id}/sent", body=sent)

    async def fail_handoff(self, handoff_id: str, reason: str) -> None:
        """Tell the controller the source cannot hand the instance over."""
        await self._call(
            "POST", f"/v1/agent/handoffs/{handoff_id}/fail", params={"reason": reason[:500]}
        )


async def _close_later(http: httpx.AsyncClient, after_s: float) -> None:
    try:
        await asyncio.sleep(after_s)
    finally:
        await http.aclose()


def _fmt(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


def _problem_detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200] or response.reason_phrase
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("title") or body.get("type") or body)
    return str(body)[:200]


def _parse(model: type[M], response: httpx.Response) -> M:
    try:
        return model.model_validate_json(response.content)
    except ValidationError as exc:
        raise SyncError(f"malformed {model.__name__} from the controller: {exc}") from exc
