"""How a VM handoff's two sites get their stream: site to site when the source can reach
the destination, through the controller's relay (``controller/relay.py``) when it cannot.

The source (:func:`dial`) tries the address the destination listens on with a short
connect timeout, then the relay. The destination (:func:`accept`) listens and, at the
same time, waits at the relay; it takes whichever connection first shows the handoff's
token, and drops any that shows something else. Either way the socket it hands back
is at the start of the stream, the token header unread: the engine and the token check
see what a direct connection carries.
"""

from __future__ import annotations

import logging
import selectors
import socket
import struct
import time
from typing import NamedTuple
from urllib.parse import urlsplit

from cloudlet.compute.base import split_endpoint
from cloudlet.errors import HandoffLinkError
from cloudlet.schemas import relay as wire
from cloudlet.schemas.mobility import HandoffOrder

log = logging.getLogger(__name__)

#: How long the source tries the destination's own address before the relay.
DIRECT_TIMEOUT_S = 3.0
#: Connect timeout to the relay (the controller is reachable, or nothing is).
RELAY_CONNECT_TIMEOUT_S = 10.0
#: Longest the source waits at the relay for its pairing: the destination waits there
#: from before the source hears of the handoff, so one that is not there is gone.
PAIR_TIMEOUT_S = 15.0
#: The source's socket timeout once connected, as a direct connection always had.
IO_TIMEOUT_S = 30.0
#: Longest a connection to the destination may take to show the token.
SHOW_TOKEN_S = 10.0


class Link(NamedTuple):
    """A connected stream between the sites, and which way it goes."""

    sock: socket.socket
    via: str  # "direct" or "relay"


def relay_endpoint(relay: str, controller_url: str) -> tuple[str, int]:
    """Where to dial the relay: ``host:port``, or ``:port`` on the controller's host.

    Raises:
        HandoffLinkError: the address is not host:port.
    """
    host, _, port = relay.rpartition(":")
    if not port.isdigit():
        raise HandoffLinkError(f"bad relay address {relay!r}")
    if not host:
        host = urlsplit(controller_url).hostname or ""
    return host.strip("[]"), int(port)


def _token_header(order: HandoffOrder) -> bytes:
    token = (order.token or "").encode()
    return struct.pack("!H", len(token)) + token


def _greet(order: HandoffOrder, role: bytes, controller_url: str) -> socket.socket:
    """A connection to the relay that has sent its greeting (not yet paired)."""
    assert order.relay is not None
    where = relay_endpoint(order.relay, controller_url)
    sock = socket.create_connection(where, RELAY_CONNECT_TIMEOUT_S)
    try:
        sock.sendall(wire.hello(role, order.id, order.token or ""))
    except OSError:
        sock.close()
        raise
    return sock


def _paired(status: bytes) -> None:
    """Raises HandoffLinkError unless the relay's answer says paired."""
    if not status:
        raise HandoffLinkError("the relay closed the connection")
    if status[0] != wire.PAIRED:
        raise HandoffLinkError(f"the relay answered: {wire.ANSWERS.get(status[0], status[0])}")


def dial(
    order: HandoffOrder,
    controller_url: str,
    *,
    direct_timeout_s: float = DIRECT_TIMEOUT_S,
    pair_timeout_s: float = PAIR_TIMEOUT_S,
    io_timeout_s: float = IO_TIMEOUT_S,
) -> Link:
    """The source's connection to the destination: directly, else through the relay.

    Raises:
        HandoffLinkError: neither way works; says why for each.
    """
    failures = []
    if order.address:
        try:
            sock = socket.create_connection(split_endpoint(order.address), direct_timeout_s)
            sock.settimeout(io_timeout_s)
            return Link(sock, "direct")
        except OSError as exc:
            failures.append(f"directly at {order.address}: {exc or type(exc).__name__}")
            log.info("handoff %s: %s; trying the relay", order.id, failures[-1])
    if order.relay:
        try:
            sock = _greet(order, wire.SOURCE, controller_url)
        except (OSError, HandoffLinkError) as exc:
            failures.append(f"through the relay at {order.relay}: {exc}")
        else:
            try:
                sock.settimeout(pair_timeout_s)
                _paired(sock.recv(1))
                sock.settimeout(io_timeout_s)
                return Link(sock, "relay")
            except TimeoutError:
                sock.close()
                failures.append(
                    f"through the relay at {order.relay}: no destination waiting there "
                    f"within {pair_timeout_s:g}s"
                )
            except (OSError, HandoffLinkError) as exc:
                sock.close()
                failures.append(f"through the relay at {order.relay}: {exc}")
    raise HandoffLinkError("; ".join(failures) or "the order names no address and no relay")


def _shows(conn: socket.socket, expected: bytes) -> bool | None:
    """Whether ``conn`` starts with ``expected`` (None: too few bytes yet), read
    without taking them off the stream."""
    try:
        data = conn.recv(len(expected), socket.MSG_PEEK)
    except BlockingIOError:
        return None
    except OSError:
        return False
    if not data or data != expected[: len(data)]:
        return False
    return True if len(data) == len(expected) else None


def accept(
    server: socket.socket,
    order: HandoffOrder,
    controller_url: str,
    *,
    timeout: float = 120.0,
) -> Link:
    """The destination's connection from the source: the first that shows the token,
    on ``server`` (listening) or paired at the relay the order names.

    Raises:
        HandoffLinkError: none came within ``timeout``.
    """
    deadline = time.monotonic() + timeout
    expected = _token_header(order)
    relay: socket.socket | None = None
    candidates: dict[socket.socket, tuple[str, float]] = {}
    winner: socket.socket | None = None
    sel = selectors.DefaultSelector()

    def register_at_relay() -> socket.socket | None:
        try:
            sock = _greet(order, wire.DESTINATION, controller_url)
        except (OSError, HandoffLinkError) as exc:
            log.warning(
                "handoff %s: the relay at %s is out of reach (%s): waiting for a direct "
                "connection only", order.id, order.relay, exc,
            )  # fmt: skip
            return None
        sel.register(sock, selectors.EVENT_READ, "relay")
        return sock

    try:
        sel.register(server, selectors.EVENT_READ, "listen")
        if order.relay:
            relay = register_at_relay()
        while winner is None:
            now = time.monotonic()
            for conn in [c for c, (_, until) in candidates.items() if until <= now]:
                log.info(
                    "handoff %s: a %s connection never showed the token",
                    order.id,
                    candidates[conn][0],
                )
                sel.unregister(conn)
                conn.close()
                del candidates[conn]
            if now >= deadline:
                ways = "directly or through the relay" if order.relay else "directly"
                raise HandoffLinkError(f"no source connected ({ways}) within {timeout:.0f}s")
            wait = min([deadline, *(until for _, until in candidates.values())]) - now
            for key, _ in sel.select(max(0.0, wait)):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if key.data == "listen":
                    conn, _ = server.accept()
                    conn.setblocking(False)
                    candidates[conn] = ("direct", now + SHOW_TOKEN_S)
                    sel.register(conn, selectors.EVENT_READ, "candidate")
                elif key.data == "relay":
                    sel.unregister(sock)
                    relay, status = None, b""
                    try:
                        status = sock.recv(1)
                        _paired(status)
                    except (OSError, HandoffLinkError) as exc:
                        sock.close()
                        log.info("handoff %s: at the relay: %s", order.id, exc)
                        if status == bytes([wire.NO_PEER]):
                            relay = register_at_relay()  # the relay gave up first: again
                        continue
                    sock.setblocking(False)
                    candidates[sock] = ("relay", now + SHOW_TOKEN_S)
                    sel.register(sock, selectors.EVENT_READ, "candidate")
                else:
                    shown = _shows(sock, expected)
                    if shown:
                        winner = sock
                        break
                    if shown is False:
                        log.warning(
                            "handoff %s: a %s connection closed or did not show the token",
                            order.id, candidates[sock][0],
                        )  # fmt: skip
                        sel.unregister(sock)
                        sock.close()
                        del candidates[sock]
                    else:
                        time.sleep(0.01)  # part of the header is in: let the rest come
        via = candidates[winner][0]
        winner.setblocking(True)
        return Link(winner, via)
    finally:
        sel.close()
        if relay is not None:
            relay.close()
        for conn in candidates:
            if conn is not winner:
                conn.close()
