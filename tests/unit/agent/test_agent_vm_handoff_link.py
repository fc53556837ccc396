"""The agent's two ends of a VM handoff's link: the source's connections show the
token; the destination turns away peers that do not and waits on for the source. And
how the source settles a handoff whose end it could not learn: through the controller."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest

from cloudlet.agent.vm_handoff import VmHandoffs, _acceptor, _dialer
from cloudlet.compute.qemu import handoff
from cloudlet.errors import ControllerUnreachableError, SyncError
from cloudlet.schemas.mobility import HandoffOrder, HandoffRole

CTL = "http://127.0.0.1:9"  # no relay in these orders: direct connections only


def _order(port: int, token: str) -> HandoffOrder:
    return HandoffOrder(
        id="h1", role=HandoffRole.SOURCE, peer_site="paris", kind="vm",
        address=f"127.0.0.1:{port}", token=token,
    )  # fmt: skip


@pytest.fixture
def server() -> Iterator[socket.socket]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    yield server
    server.close()


def test_a_peer_without_the_token_is_turned_away_and_the_source_still_gets_in(
    server: socket.socket,
) -> None:
    port = server.getsockname()[1]
    stranger = socket.create_connection(("127.0.0.1", port))
    stranger.sendall(b"\x00\x05wrong")
    silent = socket.create_connection(("127.0.0.1", port))
    silent.close()  # connects and goes without a word
    got: list[socket.socket] = []
    came: list[str] = []
    accept = _acceptor(server, _order(port, "s3cret"), CTL, came)
    accepting = threading.Thread(target=lambda: got.append(accept(10)))
    accepting.start()
    went: list[str] = []
    connect = _dialer(_order(port, "s3cret"), CTL, 3.0, went)
    with connect(5) as sock:
        accepting.join(10)
        (conn,) = got
        with conn:
            sock.sendall(b"frames")
            assert conn.recv(6) == b"frames"
    # Turned away: closed on it (a reset, as it sent what was not read).
    with stranger, contextlib.suppress(ConnectionResetError):
        assert stranger.recv(1) == b""
    assert went == came == ["direct"]


def test_no_source_within_the_wait_is_a_timeout(server: socket.socket) -> None:
    with pytest.raises(TimeoutError):
        _acceptor(server, _order(1, "s3cret"), CTL, [])(0.3)


class _Controller:
    """Answers ``sent`` with the given outcomes in turn (an exception is raised)."""

    def __init__(self, *outcomes: Exception | None) -> None:
        self.outcomes = list(outcomes)
        self.sent: list[str] = []

    async def handoff_sent(self, handoff_id: str, sent: object) -> None:
        self.sent.append(handoff_id)
        outcome = self.outcomes.pop(0)
        if outcome is not None:
            raise outcome


def _settle(controller: _Controller, monkeypatch: pytest.MonkeyPatch, resumed: list[str]) -> None:
    monkeypatch.setattr(handoff, "resume_source", lambda driver, wid: resumed.append(wid))
    handoffs = VmHandoffs(controller, "127.0.0.1", lambda *a, **k: None)  # type: ignore[arg-type]
    uncertain = handoff.HandoffUncertain("the link broke after the last frame")
    asyncio.run(handoffs._settle(_order(1, "t"), object(), "w", handoff.HandoffStats(), uncertain))


def test_an_uncertain_handoff_the_controller_takes_stays_handed_over(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    controller = _Controller(ControllerUnreachableError("down"), None)  # asked again
    resumed: list[str] = []
    _settle(controller, monkeypatch, resumed)
    assert controller.sent == ["h1", "h1"] and resumed == []  # the guest stays paused


def test_an_uncertain_handoff_the_destination_gave_up_runs_on_at_the_source(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    controller = _Controller(SyncError("handoff h1 is failed, not in flight"))
    resumed: list[str] = []
    with pytest.raises(handoff.HandoffError, match="runs on at the source"):
        _settle(controller, monkeypatch, resumed)
    assert controller.sent == ["h1"] and resumed == ["w"]
