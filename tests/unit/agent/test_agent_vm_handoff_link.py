"""The agent's two ends of a VM handoff's link: the source's connections show the
token; the destination turns away peers that do not and waits on for the source."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from cloudlet.agent.vm_handoff import _acceptor, _dialer
from cloudlet.schemas.mobility import HandoffOrder, HandoffRole


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
    accepting = threading.Thread(target=lambda: got.append(_acceptor(server, "s3cret")(10)))
    accepting.start()
    connect = _dialer(_order(port, "s3cret"))
    with connect(5) as sock:
        accepting.join(10)
        (conn,) = got
        with conn:
            sock.sendall(b"frames")
            assert conn.recv(6) == b"frames"
    assert stranger.recv(1) == b""  # closed on it
    stranger.close()


def test_no_source_within_the_wait_is_a_timeout(server: socket.socket) -> None:
    with pytest.raises(TimeoutError):
        _acceptor(server, "s3cret")(0.3)
