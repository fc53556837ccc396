"""A TCP relay on loopback that stands for a site's WAN link: it can be cut, restored and slowed.

The kernel in our test hosts has no netem, so added latency comes from here: every
chunk read from one side is written to the other ``delay_ms`` later, in order (the
delay applies in each direction, so a round trip gains twice the delay). ``cut()``
drops every open connection and closes new ones as soon as they are accepted, the
way a dead link looks to an agent; ``restore()`` lets traffic through again.
``stall()`` keeps connections open but holds every byte until ``unstall()`` (a link
that hangs mid-transfer); ``reset()`` drops the open connections and keeps accepting.

:class:`Relay` lives in an asyncio loop; :class:`RelayThread` runs one in a thread
of its own so that synchronous code (the demo, tests) can drive it::

    with RelayThread("127.0.0.1", controller_port, delay_ms=20) as relay:
        agent_url = f"http://127.0.0.1:{relay.port}"
        ...
        relay.cut()
        relay.restore()
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from cloudlet.errors import CloudletError

__all__ = ["Relay", "RelayStats", "RelayThread"]

_T = TypeVar("_T")

#: Bytes read at a time; one chunk is the unit the delay applies to.
CHUNK = 64 * 1024
#: Chunks queued per direction before reading pauses (back-pressure under delay).
QUEUE_CHUNKS = 64
_EOF = b""


@dataclass(frozen=True)
class RelayStats:
    """Counters since the relay started."""

    bytes_up: int  # client -> target
    bytes_down: int  # target -> client
    connections: int  # accepted and connected to the target
    open_connections: int
    refused: int  # accepted while cut, or target unreachable, and closed at once
    cut: bool


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close at once with a reset, dropping anything unsent, as a dead link would."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Conn:
    """One relayed connection: a pump per direction, each a reader and a delayed writer."""

    def __init__(
        self,
        relay: Relay,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        target: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.relay = relay
        self.client = client
        self.target = target
        self.tasks: list[asyncio.Task[None]] = []

    async def run(self) -> None:
        up = self._pump(self.client[0], self.target[1], "up")
        down = self._pump(self.target[0], self.client[1], "down")
        self.tasks = [asyncio.create_task(up), asyncio.create_task(down)]
        try:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        finally:
            self.close()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str
    ) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUE_CHUNKS)
        sender = asyncio.create_task(self._send(queue, writer, direction))
        try:
            while True:
                try:
                    data = await reader.read(CHUNK)
                except (ConnectionError, OSError):
                    data = _EOF
                await queue.put((time.monotonic() + self.relay.delay_ms / 1000, data))
                if not data:
                    break
            await sender
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender

    async def _send(
        self,
        queue: asyncio.Queue[tuple[float, bytes]],
        writer: asyncio.StreamWriter,
        direction: str,
    ) -> None:
        while True:
            due, data = await queue.get()
            # Chunks leave in the order they came, each no sooner than its own due time.
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            await self.relay._flowing.wait()
            try:
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()
            except (ConnectionError, OSError, RuntimeError):
                # The far side is gone: the whole connection goes, as TCP would have it.
                self.close()
                return
            self.relay._count(direction, len(data))

    def close(self, abort: bool = False) -> None:
        for task in self.tasks:
            task.cancel()
        for _, writer in (self.client, self.target):
            if abort:
                _abort(writer)
            elif not writer.is_closing():
                writer.close()


class Relay:
    """Listens on ``listen_host:listen_port`` and forwards each connection to the target.

    Args:
        target_host: where connections go.
        target_port: where connections go.
        listen_host: address to listen on (loopback by default).
        listen_port: port to listen on; 0 picks a free one (see :attr:`port` after start).
        delay_ms: added one-way delay per chunk, in each direction; may be changed live.
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        delay_ms: float = 0.0,
    ) -> None:
        if delay_ms < 0:
            raise CloudletError(f"relay delay must be >= 0 ms, got {delay_ms}")
        self.target = (target_host, target_port)
        self.listen = (listen_host, listen_port)
        self.delay_ms = delay_ms
        self.port = listen_port
        self._server: asyncio.Server | None = None
        self._conns: set[_Conn] = set()
        self._handlers: set[asyncio.Task[Any]] = set()
        self._is_cut = False
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._bytes = {"up": 0, "down": 0}
        self._connections = 0
        self._refused = 0

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> int:
        """Start listening; returns the bound port."""
        self._server = await asyncio.start_server(self._handle, *self.listen)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        """Stop listening and drop every connection."""
        if self._server is not None:
            self._server.close()
        self._drop_all()
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    # -- link control -------------------------------------------------------------------

    def cut(self) -> None:
        """Take the link down: drop open connections, close new ones on arrival."""
        self._is_cut = True
        self._drop_all()

    def restore(self) -> None:
        """Bring the link back up for new connections."""
        self._is_cut = False

    def stall(self) -> None:
        """Hold every byte in flight (connections stay open) until :meth:`unstall`."""
        self._flowing.clear()

    def unstall(self) -> None:
        self._flowing.set()

    def reset(self) -> None:
        """Drop the open connections with a reset; new ones are accepted as usual."""
        self._drop_all()

    @property
    def is_cut(self) -> bool:
        return self._is_cut

    def stats(self) -> RelayStats:
        return RelayStats(
            bytes_up=self._bytes["up"],
            bytes_down=self._bytes["down"],
            connections=self._connections,
            open_connections=len(self._conns),
            refused=self._refused,
            cut=self._is_cut,
        )

    # -- internals ----------------------------------------------------------------------

    def _count(self, direction: str, n: int) -> None:
        self._bytes[direction] += n

    def _drop_all(self) -> None:
        for conn in list(self._conns):
            conn.close(abort=True)
        self._conns.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._relay(reader, writer)
        except asyncio.CancelledError:
            # The relay is stopping. asyncio's stream server asks a finished handler
            # for its exception, and a cancelled one answers with a traceback.
            pass
        finally:
            self._handlers.discard(task)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._is_cut:
            self._refused += 1
            _abort(writer)
            return
        try:
            target = await asyncio.open_connection(*self.target)
        except OSError:
            self._refused += 1
            _abort(writer)
            return
        if self._is_cut:  # cut while we were connecting
            self._refused += 1
            _abort(writer)
            _abort(target[1])
            return
        conn = _Conn(self, (reader, writer), target)
        self._conns.add(conn)
        self._connections += 1
        try:
            await conn.run()
        finally:
            self._conns.discard(conn)


class RelayThread:
    """A :class:`Relay` running in a daemon thread with its own event loop.

    Every method is safe to call from any other thread; ``cut()`` returns once the
    open connections are gone. Use it as a context manager or call :meth:`start`
    and :meth:`stop` (idempotent).
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        delay_ms: float = 0.0,
        name: str = "relay",
    ) -> None:
        self.relay = Relay(
            target_host,
            target_port,
            listen_host=listen_host,
            listen_port=listen_port,
            delay_ms=delay_ms,
        )
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.relay.port

    @property
    def url(self) -> str:
        """``http://host:port`` of the listening side."""
        return f"http://{self.relay.listen[0]}:{self.relay.port}"

    def start(self, timeout: float = 10.0) -> RelayThread:
        """Start the thread and listen; returns once the port is bound.

        Raises:
            CloudletError: the relay could not listen (port taken, bad address).
        """
        if self._thread is not None:
            return self
        loop = asyncio.new_event_loop()
        started = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.relay.start())
            except BaseException as exc:
                failure.append(exc)
                started.set()
                loop.close()
                return
            started.set()
            try:
                loop.run_forever()
            finally:
                # As asyncio.run does: no task may outlive its loop (they would warn).
                pending = asyncio.all_tasks(loop)
                for task in pending:
                    task.cancel()
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=main, name=self.name, daemon=True)
        self._thread.start()
        if not started.wait(timeout) or failure:
            self._thread.join(timeout)
            self._thread = self._loop = None
            cause = failure[0] if failure else None
            raise CloudletError(
                f"{self.name}: cannot listen on {self.relay.listen[0]}:{self.relay.listen[1]}"
                f" ({cause or 'timed out'})"
            ) from cause
        return self

    def _call(self, coro: Coroutine[Any, Any, _T], timeout: float = 10.0) -> _T:
        if self._loop is None:
            coro.close()
            raise CloudletError(f"{self.name} is not running")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def cut(self) -> None:
        """Take the link down (see :meth:`Relay.cut`)."""

        async def cut() -> None:
            self.relay.cut()

        self._call(cut())

    def restore(self) -> None:
        """Bring the link back (see :meth:`Relay.restore`)."""

        async def restore() -> None:
            self.relay.restore()

        self._call(restore())

    def stall(self) -> None:
        """Hold bytes in flight (see :meth:`Relay.stall`)."""

        async def stall() -> None:
            self.relay.stall()

        self._call(stall())

    def unstall(self) -> None:
        async def unstall() -> None:
            self.relay.unstall()

        self._call(unstall())

    def reset(self) -> None:
        """Drop the open connections (see :meth:`Relay.reset`)."""

        async def reset() -> None:
            self.relay.reset()

        self._call(reset())

    def set_delay(self, delay_ms: float) -> None:
        """Change the added one-way delay for chunks read from now on."""
        if delay_ms < 0:
            raise CloudletError(f"relay delay must be >= 0 ms, got {delay_ms}")

        async def set_delay() -> None:
            self.relay.delay_ms = delay_ms

        self._call(set_delay())

    @property
    def is_cut(self) -> bool:
        return self.relay.is_cut

    def stats(self) -> RelayStats:
        async def stats() -> RelayStats:
            return self.relay.stats()

        return self._call(stats())

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the relay, drop its connections and end the thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self.relay.stop(), loop).result(timeout)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)
            self._loop = self._thread = None

    def __enter__(self) -> RelayThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
