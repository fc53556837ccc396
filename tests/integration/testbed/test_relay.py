"""The testbed relay against real sockets: data passes, cut and restore, delay, counters."""

from __future__ import annotations

import select
import socket
import socketserver
import threading
from collections.abc import Iterator

import pytest

from cloudlet.errors import CloudletError
from cloudlet.testbed.local import free_port, wait_for
from cloudlet.testbed.relay import RelayThread

pytestmark = pytest.mark.integration

TIMEOUT = 10.0


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        try:
            while data := self.request.recv(65536):
                self.request.sendall(data)
        except ConnectionError:
            pass  # the relay resets its side when the link is cut


class _EchoServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


@pytest.fixture
def echo_port() -> Iterator[int]:
    server = _EchoServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(TIMEOUT)


@pytest.fixture
def relay(echo_port: int) -> Iterator[RelayThread]:
    with RelayThread("127.0.0.1", echo_port) as r:
        yield r


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.settimeout(TIMEOUT)
    return sock


def held_back(sock: socket.socket, window_s: float) -> bool:
    """True if nothing arrives on ``sock`` within ``window_s`` seconds."""
    readable, _, _ = select.select([sock], [], [], window_s)
    return not readable


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return buf


def echo(port: int, payload: bytes) -> bytes:
    with connect(port) as sock:
        sock.sendall(payload)
        return recv_exactly(sock, len(payload))


def link_is_dead(sock: socket.socket) -> bool:
    """True when the connection ends (EOF or reset) instead of answering."""
    try:
        sock.sendall(b"ping")
        return sock.recv(16) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True


def new_connection_is_dead(port: int) -> bool:
    """True when a new connection is reset or closed, whether at connect or first read."""
    try:
        sock = connect(port)
    except ConnectionError:
        return True
    with sock:
        return link_is_dead(sock)


def test_data_passes_both_ways_and_is_counted(relay: RelayThread) -> None:
    payload = bytes(range(256)) * 1024  # 256 KiB: several chunks each way
    assert echo(relay.port, payload) == payload
    stats = wait_for(
        lambda: (s := relay.stats()).bytes_down == len(payload) and s, TIMEOUT, "down count"
    )
    assert stats.bytes_up == len(payload)
    assert stats.connections == 1
    assert not stats.cut


def test_cut_drops_open_connections_and_refuses_new_ones(relay: RelayThread) -> None:
    with connect(relay.port) as sock:
        sock.sendall(b"hello")
        assert recv_exactly(sock, 5) == b"hello"
        relay.cut()
        assert relay.is_cut
        assert link_is_dead(sock)
    wait_for(lambda: relay.stats().open_connections == 0, TIMEOUT, "connections dropped")
    assert new_connection_is_dead(relay.port)
    assert relay.stats().refused >= 1


def test_restore_lets_new_connections_through(relay: RelayThread) -> None:
    relay.cut()
    assert new_connection_is_dead(relay.port)
    relay.restore()
    assert not relay.is_cut
    assert echo(relay.port, b"back again") == b"back again"


def test_delay_is_added_each_way_and_keeps_order(echo_port: int) -> None:
    delay_ms = 60.0
    with (
        RelayThread("127.0.0.1", echo_port, delay_ms=delay_ms) as relay,
        connect(relay.port) as sock,
    ):
        sock.sendall(b"x")
        # The chunk waits delay_ms on the way out and again back: nothing can come
        # back within one delay (load only makes it later), then it does.
        assert held_back(sock, delay_ms / 1000)
        assert recv_exactly(sock, 1) == b"x"
        messages = [f"{i:05d};".encode() for i in range(200)]
        for message in messages:
            sock.sendall(message)
        expected = b"".join(messages)
        assert recv_exactly(sock, len(expected)) == expected


def test_set_delay_changes_the_delay_live(relay: RelayThread) -> None:
    relay.set_delay(50)
    with connect(relay.port) as sock:
        sock.sendall(b"slow")
        assert held_back(sock, 0.05)
        assert recv_exactly(sock, 4) == b"slow"
    with pytest.raises(CloudletError):
        relay.set_delay(-1)


def test_unreachable_target_closes_the_client() -> None:
    with RelayThread("127.0.0.1", free_port()) as relay:
        assert new_connection_is_dead(relay.port)
        wait_for(lambda: relay.stats().refused == 1, TIMEOUT, "refusal counted")


def test_stop_is_idempotent_and_frees_the_port(echo_port: int) -> None:
    relay = RelayThread("127.0.0.1", echo_port).start()
    port = relay.port
    with connect(port) as sock:
        sock.sendall(b"a")
        assert recv_exactly(sock, 1) == b"a"
        relay.stop()
        relay.stop()
        assert link_is_dead(sock)
    with pytest.raises(OSError):
        connect(port).close()
    with pytest.raises(CloudletError):
        relay.cut()


def test_listening_on_a_taken_port_fails_clearly(relay: RelayThread, echo_port: int) -> None:
    with pytest.raises(CloudletError, match="cannot listen"):
        RelayThread("127.0.0.1", echo_port, listen_port=relay.port).start()
    with pytest.raises(CloudletError):
        RelayThread("127.0.0.1", echo_port, delay_ms=-5)


def test_half_close_passes_through(relay: RelayThread) -> None:
    payload = b"last words" * 1000
    with connect(relay.port) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)  # the far end sees EOF, answers, then closes
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert received == payload


def test_connections_are_independent(relay: RelayThread) -> None:
    results: dict[int, bytes] = {}

    def client(i: int) -> None:
        payload = f"client {i} ".encode() * 500
        results[i] = echo(relay.port, payload)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert results == {i: f"client {i} ".encode() * 500 for i in range(10)}
    wait_for(lambda: relay.stats().connections == 10, TIMEOUT, "ten connections counted")


def test_stall_holds_bytes_with_the_connection_open_until_unstalled(relay: RelayThread) -> None:
    with connect(relay.port) as sock:
        relay.stall()
        sock.sendall(b"held")
        assert held_back(sock, 0.5)
        assert relay.stats().open_connections == 1
        relay.unstall()
        assert recv_exactly(sock, 4) == b"held"


def test_reset_drops_open_connections_but_accepts_new_ones(relay: RelayThread) -> None:
    with connect(relay.port) as sock:
        assert echo(relay.port, b"first") == b"first"
        relay.reset()
        assert link_is_dead(sock)
    assert not relay.is_cut
    assert echo(relay.port, b"again") == b"again"
