"""A TCP proxy for the handoff tests that breaks its first connection at a chosen point:
after some bytes toward the destination, before a frame of a given kind, or by dropping
the destination's answer to the last frame. Later connections pass through untouched."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable

from cloudlet.compute.qemu.handoff import _HEADER, _HELLO

#: Small socket buffers: what a cut strands in flight stays small next to a transfer.
BUFFER = 128 * 1024


def small_buffers(sock: socket.socket) -> socket.socket:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUFFER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFFER)
    return sock


def connect_small(address: tuple[str, int]) -> Callable[[float], socket.socket]:
    """A handoff ``Connect`` to ``address`` with small buffers."""

    def connect(timeout: float) -> socket.socket:
        sock = small_buffers(socket.socket())
        sock.settimeout(timeout)
        try:
            sock.connect(address)
        except OSError:
            sock.close()
            raise
        return sock

    return connect


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        part = sock.recv(n - len(buf))
        if not part:
            raise ConnectionError("closed")
        buf += part
    return buf


class CuttingProxy:
    """Listens on ``address`` and forwards to ``target``; breaks the first connection
    once (exactly one of ``after_bytes``, ``before_frame``, ``drop_answer``), then calls
    ``on_cut`` and waits ``hold_s`` before it takes the next connection."""

    def __init__(
        self,
        target: tuple[str, int],
        *,
        after_bytes: int | None = None,
        before_frame: bytes | None = None,
        drop_answer: bool = False,
        hold_s: float = 0.0,
        on_cut: Callable[[], None] | None = None,
    ) -> None:
        self.target = target
        self.after_bytes = after_bytes
        self.before_frame = before_frame
        self.drop_answer = drop_answer
        self.hold_s = hold_s
        self.on_cut = on_cut
        self.forwarded: list[int] = []  # bytes toward the destination, per connection
        self.cut = threading.Event()
        self.errors: list[BaseException] = []
        self._server = small_buffers(socket.socket())
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(4)
        self.address: tuple[str, int] = self._server.getsockname()
        self._closed = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._server.close()
        self._thread.join(5)

    def _serve(self) -> None:
        while not self._closed:
            try:
                down, _ = self._server.accept()
            except OSError:
                return
            up = small_buffers(socket.socket())
            try:
                up.connect(self.target)
            except OSError:
                down.close()
                continue
            n = len(self.forwarded)
            self.forwarded.append(0)
            cutting = n == 0
            pair = (down, up)
            threading.Thread(target=self._toward_destination, args=(pair, n, cutting)).start()
            threading.Thread(target=self._toward_source, args=(pair, cutting)).start()
            if cutting:
                self.cut.wait(120)
                try:
                    if self.on_cut is not None:
                        self.on_cut()
                except BaseException as exc:  # the test reads it
                    self.errors.append(exc)
                time.sleep(self.hold_s)

    def _break(self, pair: tuple[socket.socket, socket.socket]) -> None:
        for sock in pair:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
        self.cut.set()

    def _toward_destination(
        self, pair: tuple[socket.socket, socket.socket], n: int, cutting: bool
    ) -> None:
        down, up = pair
        try:
            if cutting and self.after_bytes is not None:
                while self.forwarded[n] < self.after_bytes:
                    data = down.recv(min(65536, self.after_bytes - self.forwarded[n]))
                    if not data:
                        break
                    up.sendall(data)
                    self.forwarded[n] += len(data)
                self._break(pair)
                return
            if cutting and self.before_frame is not None:
                while True:
                    header = _recv_exact(down, _HEADER.size)
                    kind, _, _, length = _HEADER.unpack(header)
                    if kind == self.before_frame[0]:
                        self._break(pair)
                        return
                    frame = header + (_recv_exact(down, length) if length else b"")
                    up.sendall(frame)
                    self.forwarded[n] += len(frame)
            while data := down.recv(65536):
                up.sendall(data)
                self.forwarded[n] += len(data)
            up.shutdown(socket.SHUT_WR)
        except OSError:
            self._break(pair)

    def _toward_source(self, pair: tuple[socket.socket, socket.socket], cutting: bool) -> None:
        down, up = pair
        try:
            if cutting and self.drop_answer:
                down.sendall(_recv_exact(up, _HELLO.size))
                _recv_exact(up, 2)  # the answer to 'E': the VM runs there; lost here
                self._break(pair)
                return
            while data := up.recv(65536):
                down.sendall(data)
            down.shutdown(socket.SHUT_WR)
        except OSError:
            self._break(pair)
