"""The handoff relay: where a VM handoff's two sites meet when the source cannot reach
the destination (NAT, a firewall, no route between them) but both reach the controller.

Each site connects to the relay's port and greets it (``schemas.relay``): its role, the
handoff's id and a proof made with the handoff's one-time token, which the relay checks
against the database. A greeted connection waits (``relay_wait_s`` at most, and no more
than ``relay_max_waiting`` of them at once) for the other side; once both are there the
relay answers each ``PAIRED`` and splices their bytes both ways, as they come, until both
have closed (an end-of-stream is passed on as one) or neither has sent anything for
``relay_idle_s``. What travels after the pairing is exactly what a direct connection
carries, so the handoff engine does not know which one it has.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from cloudlet.controller.services import mobility
from cloudlet.controller.state import ControllerState
from cloudlet.schemas import relay as wire

log = logging.getLogger(__name__)

#: Longest a new connection may take to send its greeting.
HELLO_TIMEOUT_S = 10.0
#: Bytes read at once when splicing.
CHUNK = 256 * 1024
#: Seconds between attempts to take a fixed relay port another process holds.
REBIND_S = 5.0

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
#: (handoff id, role, proof) -> whether the connection may meet its peer.
Admits = Callable[[str, bytes, bytes], Awaitable[bool]]


@dataclass
class _Waiter:
    """A greeted connection waiting for its peer; the peer's handler hands its own
    streams over through ``paired`` and learns from ``back`` whether they were used."""

    paired: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter, asyncio.Future[bool]]]


@dataclass
class Relay:
    """Pairs connections by handoff id and role, and splices each pair."""

    admits: Admits
    wait_s: float = 120.0
    idle_s: float = 120.0
    max_waiting: int = 256
    on_bytes: Callable[[int], None] = lambda _n: None
    on_outcome: Callable[[str], None] = lambda _outcome: None
    _waiting: dict[tuple[str, bytes], _Waiter] = field(default_factory=dict)

    @property
    def unpaired(self) -> int:
        """Connections waiting for their peer now."""
        return len(self._waiting)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one connection (``asyncio.start_server``'s callback)."""
        try:
            await self._handle(reader, writer)
        finally:  # also when cancelled (the controller stops): no socket left open
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(HELLO_TIMEOUT_S):
                handoff_id, role, proof = await _read_hello(reader)
        except (TimeoutError, ValueError, ConnectionError, asyncio.IncompleteReadError):
            self.on_outcome("bad-greeting")
            await _close(writer)
            return
        try:
            admitted = await self.admits(handoff_id, role, proof)
        except Exception:
            log.exception("relay: checking a greeting for handoff %s failed", handoff_id)
            admitted = False
        if not admitted:
            log.info("relay: refused a %s for handoff %s", _name(role), handoff_id)
            self.on_outcome("refused")
            await _answer(writer, wire.REFUSED)
            return
        await self._meet(handoff_id, role, reader, writer)

    async def _meet(
        self,
        handoff_id: str,
        role: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        other = wire.DESTINATION if role == wire.SOURCE else wire.SOURCE
        loop = asyncio.get_running_loop()
        while (peer := self._waiting.pop((handoff_id, other), None)) is not None:
            back: asyncio.Future[bool] = loop.create_future()
            peer.paired.set_result((reader, writer, back))
            if await back:
                return  # spliced, and closed, by the peer's handler
            # The peer had gone at that very moment: look again, then wait.
        if self.unpaired >= self.max_waiting:
            self.on_outcome("busy")
            await _answer(writer, wire.BUSY)
            return
        mine = _Waiter(loop.create_future())
        key = (handoff_id, role)
        superseded = self._waiting.pop(key, None)
        if superseded is not None:  # the same side again (a retry): the newest waits
            superseded.paired.cancel()
        self._waiting[key] = mine
        # Nothing may arrive before the pairing: a read that returns means it has gone.
        probe = asyncio.ensure_future(reader.read(1))
        try:
            await asyncio.wait(
                {mine.paired, probe}, timeout=self.wait_s, return_when="FIRST_COMPLETED"
            )
        finally:
            if self._waiting.get(key) is mine:
                del self._waiting[key]
            probe.cancel()
        await asyncio.gather(probe, return_exceptions=True)
        intact = probe.cancelled()
        if mine.paired.done() and not mine.paired.cancelled():
            peer_reader, peer_writer, back = mine.paired.result()
            if not intact:
                back.set_result(False)
                self.on_outcome("gone")
                await _close(writer)
                return
            try:
                await self._splice(handoff_id, (reader, writer), (peer_reader, peer_writer))
            finally:
                back.set_result(True)
            return
        if mine.paired.cancelled():
            self.on_outcome("superseded")
            await _close(writer)
        elif not intact:
            self.on_outcome("gone")
            await _close(writer)
        else:
            log.info("relay: no %s came for handoff %s", _name(other), handoff_id)
            self.on_outcome("no-peer")
            await _answer(writer, wire.NO_PEER)

    async def _splice(self, handoff_id: str, a: Streams, b: Streams) -> None:
        self.on_outcome("paired")
        log.info("relay: handoff %s paired", handoff_id)
        last = [time.monotonic()]
        started = last[0]
        carried = [0]

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while True:
                try:
                    async with asyncio.timeout(self.idle_s):
                        data = await src.read(CHUNK)
                except TimeoutError:
                    if time.monotonic() - last[0] < self.idle_s:
                        continue  # the other way is busy
                    raise
                if not data:
                    if dst.can_write_eof():
                        dst.write_eof()
                    return
                dst.write(data)
                await dst.drain()
                last[0] = time.monotonic()
                carried[0] += len(data)
                self.on_bytes(len(data))

        try:
            for _reader, w in (a, b):
                w.write(bytes([wire.PAIRED]))
            pumps = [asyncio.create_task(pump(a[0], b[1])), asyncio.create_task(pump(b[0], a[1]))]
            try:
                done, _ = await asyncio.wait(pumps, return_when="FIRST_EXCEPTION")
                for task in done:
                    if (exc := task.exception()) is not None:
                        why = "idle" if isinstance(exc, TimeoutError) else repr(exc)
                        log.info("relay: handoff %s cut: %s", handoff_id, why)
            finally:
                for task in pumps:
                    task.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
        finally:
            await asyncio.gather(_close(a[1]), _close(b[1]))
            log.info(
                "relay: handoff %s: %d bytes in %.1fs",
                handoff_id, carried[0], time.monotonic() - started,
            )  # fmt: skip


async def _read_hello(reader: asyncio.StreamReader) -> tuple[str, bytes, bytes]:
    head = await reader.readexactly(len(wire.MAGIC) + 2)
    magic, role, (length,) = head[:-2], head[-2:-1], struct.unpack("!B", head[-1:])
    if magic != wire.MAGIC or role not in wire.ROLES or not 0 < length <= wire.MAX_ID_BYTES:
        raise ValueError("not a relay greeting")
    rest = await reader.readexactly(length + wire.PROOF_BYTES)
    return rest[:length].decode("ascii"), role, rest[length:]


def _name(role: bytes) -> str:
    return "source" if role == wire.SOURCE else "destination"


async def _answer(writer: asyncio.StreamWriter, status: int) -> None:
    with contextlib.suppress(ConnectionError):
        writer.write(bytes([status]))
    await _close(writer)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError, OSError):
        await writer.wait_closed()


def admits_from(st: ControllerState) -> Admits:
    """The relay's check against the database: a VM handoff in flight, its token."""

    def check(handoff_id: str, role: bytes, proof: bytes) -> bool:
        with st.sessions() as session:
            return mobility.relay_admits(session, handoff_id, role, proof)

    async def admits(handoff_id: str, role: bytes, proof: bytes) -> bool:
        return await asyncio.to_thread(check, handoff_id, role, proof)

    return admits


async def run(st: ControllerState) -> None:
    """Serve the relay as long as the controller runs (one of ``tasks.start``'s tasks).

    A fixed port that another process holds (a sibling ``--workers`` process serving
    it, usually) is tried again every few seconds: one process of the host serves it.
    """
    cfg = st.settings.mobility
    host = cfg.relay_host or st.settings.host
    relay = Relay(
        admits_from(st),
        wait_s=cfg.relay_wait_s,
        idle_s=cfg.relay_idle_s,
        max_waiting=cfg.relay_max_waiting,
    )
    if st.metrics is not None:
        relay.on_bytes = st.metrics.relay_bytes.inc
        relay.on_outcome = lambda outcome: st.metrics.relay_connections.labels(outcome).inc()
    if cfg.relay_port:
        st.relay_address = cfg.relay_address or f":{cfg.relay_port}"
    told = False
    while True:
        try:
            server = await asyncio.start_server(relay.handle, host, cfg.relay_port)
        except OSError as exc:
            if not cfg.relay_port:
                raise
            if not told:
                log.warning(
                    "handoff relay: port %d is taken (%s); trying again every %.0fs "
                    "(a sibling worker may serve it)", cfg.relay_port, exc, REBIND_S,
                )  # fmt: skip
                told = True
            await asyncio.sleep(REBIND_S)
            continue
        port = server.sockets[0].getsockname()[1]
        st.relay_address = cfg.relay_address or f":{port}"
        log.info("handoff relay on %s:%d, advertised as %s", host, port, st.relay_address)
        async with server:
            await server.serve_forever()
