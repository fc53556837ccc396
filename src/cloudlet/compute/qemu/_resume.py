"""What lets a live handoff survive a broken link: the destination's hello, the marks
the source resends after, and the connections opened again (see handoff.py's docstring
for the wire format)."""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import time
from typing import TYPE_CHECKING, Protocol

import numpy as np

from cloudlet.errors import DriverError

if TYPE_CHECKING:
    from cloudlet.compute.qemu.handoff import HandoffStats

_HELLO = struct.Struct("!cBI")
_RESUME, _DONE = 0, 1

log = logging.getLogger(__name__)


class HandoffError(DriverError):
    """A handoff failed; the source VM runs on (raised at the source) or nothing was
    kept (at the destination)."""


class HandoffUncertain(HandoffError):
    """The link broke after the source handed over the last frame, and no reconnect
    told it whether the destination runs the VM: the source guest stays paused (both
    could be running otherwise); whoever called must settle it, e.g. through the
    controller, then :func:`finish_source` or :func:`resume_source`."""

    def __init__(self, message: str, stats: HandoffStats | None = None) -> None:
        super().__init__(message)
        self.stats = stats  # what the handoff cost until then


class _LinkDown(ConnectionError):
    """The connection broke or went silent: a new one may resume the transfer."""


class Connect(Protocol):
    """The source's way to the destination: a new connection, within ``timeout`` seconds,
    that has shown whatever the destination checks (a token); raises OSError if none."""

    def __call__(self, timeout: float) -> socket.socket: ...


class Accept(Protocol):
    """The destination's way to take the source in: the next connection that showed what
    it checks, within ``timeout`` seconds; raises OSError (TimeoutError) if none came."""

    def __call__(self, timeout: float) -> socket.socket: ...


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    """``n`` bytes from ``sock``; _LinkDown (an OSError) when it breaks, closes or times out."""
    buf = bytearray()
    try:
        while len(buf) < n:
            part = sock.recv(n - len(buf))
            if not part:
                raise _LinkDown("the peer closed the connection")
            buf += part
    except _LinkDown:
        raise
    except OSError as exc:
        raise _LinkDown(f"the connection broke: {exc}") from exc
    return bytes(buf)


def _send_all(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except OSError as exc:
        raise _LinkDown(f"the connection broke: {exc}") from exc


class _ResendLog:
    """The source's record of what the destination may not hold as sent: per mark it
    has not confirmed, the chunk indexes sent before that mark (after the one before).

    The destination takes frames in order, so after a break it holds everything up to
    the last mark it saw, plus possibly part of what came after. A chunk sent after
    that mark may hold either value there; every other chunk holds exactly its last
    value sent before the mark, which is what the source remembers as sent.
    """

    def __init__(self) -> None:
        self.last = 0
        self._pending: dict[int, tuple[int, np.ndarray]] = {}

    def register(self, region: int, index: np.ndarray) -> int:
        """Note ``index`` as about to be sent in ``region``; the mark to send after it."""
        self.last += 1
        self._pending[self.last] = (region, index)
        return self.last

    def confirm(self, mark: int) -> dict[int, np.ndarray]:
        """The destination holds everything up to ``mark``: forget those, and return by
        region the (sorted, unique) indexes sent after it, to send again.

        Raises:
            HandoffError: ``mark`` was never sent (a destination that lost track).
        """
        if not 0 <= mark <= self.last:
            raise HandoffError(f"the destination claims mark {mark}; the last sent was {self.last}")
        for seq in [seq for seq in self._pending if seq <= mark]:
            del self._pending[seq]
        parts: dict[int, list[np.ndarray]] = {}
        for region, index in self._pending.values():
            parts.setdefault(region, []).append(index)
        return {r: np.unique(np.concatenate(p)).astype(np.uint32) for r, p in parts.items()}


def _keepalive(sock: socket.socket) -> None:
    """Probe an idle connection: a peer gone silently is noticed in about 10 s, also while
    the source waits (up to its answer timeout) for the destination to start the VM."""
    with contextlib.suppress(OSError, AttributeError):  # the options are Linux's
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 4)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 2)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)


class _Link:
    """The source's connection to the destination: opened, and reopened after a break,
    through ``connect`` with backoff until ``within_s`` after it broke."""

    def __init__(
        self,
        connect: Connect,
        within_s: float,
        link_timeout_s: float,
    ) -> None:
        self.connect = connect
        self.within_s = within_s
        self.link_timeout_s = link_timeout_s
        self.sock: socket.socket | None = None

    def open(self) -> tuple[int, int]:
        """A new connection and the destination's hello on it: (status, mark).

        Raises:
            HandoffError: no connection within the deadline, or a peer that is no
                handoff destination.
        """
        self.close()
        deadline = time.monotonic() + self.within_s
        delay, last = 0.2, "no attempt"
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                sock = self.connect(min(remaining, self.link_timeout_s))
            except OSError as exc:
                last = str(exc) or type(exc).__name__
            else:
                try:
                    _keepalive(sock)
                    sock.settimeout(max(1.0, min(remaining, self.link_timeout_s)))
                    kind, status, mark = _HELLO.unpack(_recv_exact(sock, _HELLO.size))
                except OSError as exc:
                    sock.close()
                    last = str(exc)
                else:
                    if kind != b"H" or status not in (_RESUME, _DONE):
                        sock.close()
                        raise HandoffError("the peer is no handoff destination (no hello)")
                    sock.settimeout(self.link_timeout_s)
                    self.sock = sock
                    return status, mark
            time.sleep(max(0.0, min(delay, deadline - time.monotonic())))
            delay = min(delay * 2, 5.0)
        raise HandoffError(f"no connection to the destination within {self.within_s:g} s: {last}")

    def ack(self) -> None:
        """Tell the destination we know it runs the VM (it stops answering reconnects);
        best effort: if this is lost, it waits out its own deadline."""
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.sendall(b"K")

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
            self.sock = None


def _next_source(accept: Accept, within_s: float, link_timeout_s: float) -> socket.socket:
    try:
        conn = accept(within_s)
    except OSError as exc:
        raise HandoffError(f"no source connected within {within_s:g} s: {exc}") from exc
    _keepalive(conn)
    conn.settimeout(link_timeout_s)
    return conn


def _settle(conn: socket.socket, accept: Accept, within_s: float, link_timeout_s: float) -> None:
    """The VM runs here: tell the source, until it acknowledges. One that lost the answer
    reconnects and hears ``done``; if none comes within ``within_s``, stop waiting (the
    source then settles it with the controller)."""
    answer = b"OK"
    while True:
        with conn:
            try:
                _send_all(conn, answer)
                if _recv_exact(conn, 1) == b"K":
                    return
            except _LinkDown as exc:
                log.warning("handoff: the source did not confirm the VM runs here (%s)", exc)
        try:
            conn = _next_source(accept, within_s, link_timeout_s)
        except HandoffError as exc:
            log.warning("handoff: the VM runs here; the source never confirmed it: %s", exc)
            return
        answer = _HELLO.pack(b"H", _DONE, 0)


def tcp_connect(address: tuple[str, int]) -> Connect:
    """Plain TCP to ``address``, nothing shown (benches and tests; the agent adds its token)."""

    def connect(timeout: float) -> socket.socket:
        return socket.create_connection(address, timeout)

    return connect


def tcp_accept(server: socket.socket) -> Accept:
    """The next connection to the listening ``server``, nothing checked."""

    def accept(timeout: float) -> socket.socket:
        server.settimeout(timeout)
        return server.accept()[0]

    return accept
