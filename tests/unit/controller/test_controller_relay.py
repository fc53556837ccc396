"""The handoff relay and the sites' side of it (``agent/handoff_link``), on loopback:
pairing, refusals, splicing both ways, the bounds on waiting and on silence."""

from __future__ import annotations

import asyncio
import hmac
import socket
import struct
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from controller_fakes import enrolled_site, sessions

from cloudlet.agent.handoff_link import Link, accept, dial, relay_endpoint
from cloudlet.controller.db.models import Handoff
from cloudlet.controller.relay import Relay
from cloudlet.controller.services import mobility
from cloudlet.controller.services._util import utcnow
from cloudlet.errors import HandoffLinkError
from cloudlet.schemas import relay as wire
from cloudlet.schemas.mobility import HandoffOrder, HandoffRole
from cloudlet.testbed.local import wait_for

TOKEN = "the-one-time-token"


@dataclass
class Running:
    relay: Relay
    port: int
    carried: list[int] = field(default_factory=list)
    outcomes: list[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@contextmanager
def running_relay(tokens: dict[str, str], **bounds: float) -> Iterator[Running]:
    """A relay on its own event loop in a thread, admitting ``tokens`` (id -> token)."""

    async def admits(handoff_id: str, role: bytes, proof: bytes) -> bool:
        token = tokens.get(handoff_id)
        return token is not None and hmac.compare_digest(proof, wire.proof(token, role, handoff_id))

    relay = Relay(admits, **bounds)  # type: ignore[arg-type]
    started: Future[tuple[asyncio.AbstractEventLoop, asyncio.Future[None], int]] = Future()

    async def main() -> None:
        server = await asyncio.start_server(relay.handle, "127.0.0.1", 0)
        stop: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        started.set_result((asyncio.get_running_loop(), stop, server.sockets[0].getsockname()[1]))
        async with server:
            await stop

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    loop, stop, port = started.result(10)
    out = Running(relay, port)
    relay.on_bytes = out.carried.append
    relay.on_outcome = out.outcomes.append
    try:
        yield out
    finally:
        loop.call_soon_threadsafe(stop.set_result, None)
        thread.join(10)


def order(role: HandoffRole, relay: str | None, address: str | None = None, **kw: str):
    fields = {"id": "h1", "token": TOKEN, **kw}
    return HandoffOrder(
        role=role, peer_site="peer", kind="vm", address=address, relay=relay, **fields
    )


def header(token: str = TOKEN) -> bytes:
    return struct.pack("!H", len(token)) + token.encode()


def listener() -> socket.socket:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    return server


def closed_port() -> str:
    """An address where nothing listens: a direct connect is refused at once."""
    with listener() as s:
        return f"127.0.0.1:{s.getsockname()[1]}"


def receive(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


CTL = "http://127.0.0.1:1"  # the controller URL: only its host matters, for ":port"


def test_sites_that_cannot_reach_each_other_meet_at_the_relay() -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB, so the splice takes many reads
    with running_relay({"h1": TOKEN}) as r, listener() as server, ThreadPoolExecutor(2) as pool:
        # The destination listens where the source cannot reach it, and waits at the relay.
        dest = pool.submit(accept, server, order(HandoffRole.DESTINATION, r.address), CTL)
        wait_for(lambda: r.relay.unpaired == 1, 10, "a waiter at the relay")
        src = dial(order(HandoffRole.SOURCE, f":{r.port}", closed_port()), CTL, direct_timeout_s=1)
        assert src.via == "relay"
        src.sock.sendall(header() + payload)
        got: Link = dest.result(10)
        assert got.via == "relay"
        with src.sock, got.sock:
            # The stream starts with the token header, unread, as a direct one does.
            assert receive(got.sock, len(header()) + len(payload)) == header() + payload
            got.sock.sendall(b"the VM runs here")  # and the answer goes back
            assert receive(src.sock, 16) == b"the VM runs here"
            got.sock.shutdown(socket.SHUT_WR)  # an end of stream is passed on as one
            assert src.sock.recv(1) == b""
            src.sock.sendall(b"still open this way")
            assert receive(got.sock, 19) == b"still open this way"
        wait_for(
            lambda: sum(r.carried) == len(header()) + len(payload) + 16 + 19,
            10,
            "every byte counted",
        )
        assert "paired" in r.outcomes and r.relay.unpaired == 0


def test_the_direct_path_wins_when_it_works_and_the_relay_wait_is_dropped() -> None:
    with running_relay({"h1": TOKEN}) as r, listener() as server, ThreadPoolExecutor(1) as pool:
        dest = pool.submit(accept, server, order(HandoffRole.DESTINATION, r.address), CTL)
        wait_for(lambda: r.relay.unpaired == 1, 10, "a waiter at the relay")
        host, port = server.getsockname()
        src = dial(order(HandoffRole.SOURCE, r.address, f"{host}:{port}"), CTL)
        assert src.via == "direct"
        src.sock.sendall(header())
        got = dest.result(10)
        with src.sock, got.sock:
            assert got.via == "direct" and receive(got.sock, len(header())) == header()
        # The waiter leaves the table before its outcome is counted: wait for both.
        wait_for(lambda: r.relay.unpaired == 0 and r.outcomes == ["gone"], 10, "the waiter dropped")


def test_a_wrong_token_is_refused_and_does_not_pair() -> None:
    with running_relay({"h1": TOKEN}) as r, listener() as server, ThreadPoolExecutor(1) as pool:
        dest = pool.submit(
            accept, server, order(HandoffRole.DESTINATION, r.address), CTL, timeout=3
        )
        wait_for(lambda: r.relay.unpaired == 1, 10, "a waiter at the relay")
        stranger = order(HandoffRole.SOURCE, r.address, closed_port(), token="guessed")
        with pytest.raises(HandoffLinkError, match="refused"):
            dial(stranger, CTL)
        unknown = order(HandoffRole.SOURCE, r.address, id="h2")
        with pytest.raises(HandoffLinkError, match="refused"):
            dial(unknown, CTL)
        # A stranger on the direct port, showing something else, is dropped too.
        with socket.create_connection(server.getsockname()) as s:
            s.sendall(header("guessed-wrong-token"))
            with pytest.raises(HandoffLinkError, match="no source connected"):
                dest.result(10)
        assert r.outcomes.count("refused") == 2 and "paired" not in r.outcomes


def test_a_side_nobody_joins_hears_so_after_the_wait() -> None:
    with running_relay({"h1": TOKEN}, wait_s=0.3) as r:
        with pytest.raises(HandoffLinkError, match="never came"):
            dial(order(HandoffRole.SOURCE, r.address), CTL)
        assert r.outcomes == ["no-peer"] and r.relay.unpaired == 0
        # The source gives up sooner on its own: its destination waits there first.
        r.relay.wait_s = 30
        with pytest.raises(HandoffLinkError, match=r"no destination waiting there within 0\.3s"):
            dial(order(HandoffRole.SOURCE, r.address), CTL, pair_timeout_s=0.3)
        wait_for(lambda: r.outcomes == ["no-peer", "gone"], 10, "both outcomes")


def test_waiters_are_bounded() -> None:
    with (
        running_relay({"h1": TOKEN, "h2": TOKEN}, max_waiting=1) as r,
        socket.create_connection(("127.0.0.1", r.port)) as first,
    ):
        first.sendall(wire.hello(wire.DESTINATION, "h1", TOKEN))
        wait_for(lambda: r.relay.unpaired == 1, 10, "a waiter at the relay")
        with pytest.raises(HandoffLinkError, match="busy"):
            dial(order(HandoffRole.SOURCE, r.address, id="h2"), CTL)


def test_a_silent_pair_is_cut_and_garbage_is_not_a_greeting() -> None:
    with running_relay({"h1": TOKEN}, idle_s=0.3) as r:
        with socket.create_connection(("127.0.0.1", r.port)) as junk:
            junk.sendall(b"GET / HTTP/1.1\r\n\r\n" + b"x" * 100)
            assert junk.recv(1) == b""
        with socket.create_connection(("127.0.0.1", r.port)) as dest:
            dest.sendall(wire.hello(wire.DESTINATION, "h1", TOKEN))
            src = dial(order(HandoffRole.SOURCE, r.address), CTL)
            with src.sock:
                assert dest.recv(1) == bytes([wire.PAIRED])
                dest.settimeout(5)
                assert dest.recv(1) == b""  # nothing moved for idle_s: both ends closed
                assert src.sock.recv(1) == b""
        assert r.outcomes == ["bad-greeting", "paired"]


def test_the_relay_address_may_leave_the_host_to_the_controller_url() -> None:
    assert relay_endpoint(":8081", "https://ctl.example:8080") == ("ctl.example", 8081)
    assert relay_endpoint(":8081", "http://[::1]:8080") == ("::1", 8081)
    assert relay_endpoint("relay.example:9000", "http://ctl:8080") == ("relay.example", 9000)
    with pytest.raises(HandoffLinkError):
        relay_endpoint("nowhere", "http://ctl:8080")


def test_the_database_admits_only_a_vm_handoff_in_flight_with_its_token(tmp_path: Path) -> None:
    maker = sessions(tmp_path)
    with maker.begin() as session:
        lyon, paris = enrolled_site(session, "lyon"), enrolled_site(session, "paris")
        row = Handoff(
            id="h1", instance_id="i1", project="admin", source_site_id=lyon.id,
            dest_site_id=paris.id, kind="vm", phase="requested", epoch=1, bytes=0, phases={},
            created_at=utcnow(), token=TOKEN, relay=":8081",
        )  # fmt: skip
        session.add(row)
        session.flush()
        # Both sides' orders name the relay the handoff was opened with.
        assert mobility.handoff_orders(session, paris)["i1"].relay == ":8081"
        for role in wire.ROLES:
            assert mobility.relay_admits(session, "h1", role, wire.proof(TOKEN, role, "h1"))
        assert not mobility.relay_admits(
            session, "h1", wire.SOURCE, wire.proof("x", wire.SOURCE, "h1")
        )
        # A proof for one role does not pass for the other.
        src_proof = wire.proof(TOKEN, wire.SOURCE, "h1")
        assert not mobility.relay_admits(session, "h1", wire.DESTINATION, src_proof)
        assert not mobility.relay_admits(session, "h2", wire.SOURCE, src_proof)
        row.phase = "transferred"  # the VM runs at the destination: nothing left to relay
        assert not mobility.relay_admits(session, "h1", wire.SOURCE, src_proof)


def test_with_neither_way_open_the_source_says_why_for_each() -> None:
    lost = order(HandoffRole.SOURCE, closed_port(), closed_port())
    with pytest.raises(HandoffLinkError, match=r"directly at .*; through the relay at .*refused"):
        dial(lost, CTL)
