"""The controller client: error mapping at the boundary, bearer header, byte counts."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from datetime import UTC, datetime

import httpx
import pytest

from cloudlet.agent.client import ControllerClient
from cloudlet.errors import AuthError, ControllerUnreachableError, SyncError
from cloudlet.schemas import AgentReport, EnrollRequest


def client_for(handler: Callable[[httpx.Request], httpx.Response]) -> ControllerClient:
    return ControllerClient(
        "http://controller.test", credential="cred", transport=httpx.MockTransport(handler)
    )


def problem(status: int, detail: str) -> httpx.Response:
    return httpx.Response(status, json={"type": "urn:x:auth", "title": "t", "detail": detail})


def test_pull_sends_cursor_wait_and_bearer_and_counts_bytes() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204, headers={"date": "Sat, 21 Nov 2026 05:00:00 GMT"})

    client = client_for(handler)
    assert asyncio.run(client.pull(7, 25)) is None
    assert seen[0].url.params["since"] == "7"
    assert seen[0].url.params["wait"] == "25"
    assert seen[0].headers["authorization"] == "Bearer cred"
    assert client.bytes_sent > 0 and client.bytes_received > 0


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (401, AuthError),
        (403, AuthError),
        (500, ControllerUnreachableError),
        (503, ControllerUnreachableError),
        (429, ControllerUnreachableError),
        (422, SyncError),
    ],
)
def test_error_answers_become_domain_errors(status: int, error: type[Exception]) -> None:
    client = client_for(lambda request: problem(status, "nope"))
    report = AgentReport(applied_revision=0)
    with pytest.raises(error, match=f"controller answered {status} to POST /v1/agent/report: nope"):
        asyncio.run(client.report(report))


def test_auth_error_is_not_mistaken_for_unreachable() -> None:
    client = client_for(lambda request: problem(401, "bad token"))
    with pytest.raises(AuthError) as info:
        asyncio.run(client.enroll(EnrollRequest(join_token="12345678")))
    assert not isinstance(info.value, ControllerUnreachableError)


def test_connection_refused_is_unreachable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nobody listens there
    client = ControllerClient(f"http://127.0.0.1:{port}", credential="cred", timeout=5)
    with pytest.raises(ControllerUnreachableError, match="ConnectError"):
        asyncio.run(client.pull(0, 1))


def test_malformed_answer_is_a_sync_error() -> None:
    client = client_for(lambda request: httpx.Response(200, json={"acked_seq": "x"}))
    with pytest.raises(SyncError, match="malformed ReportAck"):
        asyncio.run(client.report(AgentReport(applied_revision=0)))


def test_report_without_credential_refuses_locally() -> None:
    client = ControllerClient("http://controller.test")
    with pytest.raises(AuthError, match="no credential"):
        asyncio.run(client.report(AgentReport(applied_revision=0)))


def test_ack_parses() -> None:
    now = datetime.now(UTC).isoformat()
    client = client_for(
        lambda request: httpx.Response(
            200, json={"acked_seq": 3, "revision": 2, "server_time": now}
        )
    )
    ack = asyncio.run(client.report(AgentReport(applied_revision=0)))
    assert (ack.acked_seq, ack.revision) == (3, 2)


def test_link_options_fail_a_silent_connection_within_the_bound() -> None:
    import socket

    from cloudlet.agent.client import link_socket_options

    options = {(level, name): value for level, name, value in link_socket_options(8.0)}
    assert options[(socket.SOL_SOCKET, socket.SO_KEEPALIVE)] == 1
    if hasattr(socket, "TCP_USER_TIMEOUT"):
        assert options[(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)] == 8000
        idle = options[(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE)]
        count = options[(socket.IPPROTO_TCP, socket.TCP_KEEPCNT)]
        interval = options[(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL)]
        assert idle + count * interval <= 8  # an idle long poll is given up in time too
    with socket.socket() as sock:  # the kernel takes every one of them
        for level, name, value in link_socket_options(8.0):
            sock.setsockopt(level, name, value)
