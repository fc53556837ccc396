"""Live handoff of a VM instance, each site's part (the engine is compute/qemu/handoff.py).

Destination: make sure the base image is cached, listen on a port of its own, tell
the controller where (``ready``), take the VM stream from connections that show the
handoff's token (a broken one is followed by the next, which resumes it), and run the
VM from it. Source (told once the destination is ready): stream the running VM
there, site to site, or through the controller's relay when the destination is out
of reach (``handoff_link``), reconnecting for up to ``resume_within_s`` after a
break; once the destination runs it, end the paused copy here and tell the
controller (``sent``), which then gives the instance to the destination at the next
epoch. Either side that fails says so (``fail``): the source guest runs on, and the
destination's partial copy goes by its desired state. If the link broke after the
last frame and never came back, the source cannot know whether the destination runs
the VM: its guest stays paused and the controller settles it (``sent`` accepted: the
destination owns the instance; refused because the destination gave up: the guest
runs on here).

The source gets its connections from one :class:`Connect` (``_dialer``), the
destination from one :class:`Accept` (``_acceptor``), both on ``handoff_link``: each
reconnect again goes directly or through the relay, whichever works then.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cloudlet.agent import actual, handoff_link
from cloudlet.agent._specs import workload_id
from cloudlet.agent.client import ControllerClient
from cloudlet.agent.desired import DesiredEntry
from cloudlet.errors import CloudletError, ControllerUnreachableError, HandoffLinkError, SyncError
from cloudlet.schemas import ActualState, ComponentKind
from cloudlet.schemas.artifacts import ArtifactKind
from cloudlet.schemas.mobility import HandoffOrder, HandoffSent

if TYPE_CHECKING:
    from cloudlet.agent._instance_ops import InstanceOps
    from cloudlet.compute.qemu.handoff import Accept, Connect, HandoffStats

log = logging.getLogger(__name__)

#: Longest a destination waits for the source to connect (first, and after a break).
ACCEPT_TIMEOUT_S = 120.0
#: Longest a source tries to reconnect after the link broke (the destination waits longer).
RESUME_WITHIN_S = 60.0
#: Longest a connected peer may take to show the token.
TOKEN_TIMEOUT_S = 10.0


def _read(conn: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        part = conn.recv(n - len(buf))
        if not part:
            raise ConnectionError("the peer closed the connection")
        buf += part
    return buf


def _dialer(
    order: HandoffOrder, controller_url: str, direct_timeout_s: float, ways: list[str]
) -> Connect:
    """The source's connections to the destination (directly, else through the relay),
    each showing the handoff's token; ``ways`` gets which way each one went."""
    token = (order.token or "").encode()

    def connect(timeout: float) -> socket.socket:
        try:
            link = handoff_link.dial(
                order, controller_url, direct_timeout_s=min(direct_timeout_s, timeout)
            )
        except HandoffLinkError as exc:  # the engine tries again until its deadline
            raise ConnectionError(str(exc)) from exc
        try:
            link.sock.sendall(struct.pack("!H", len(token)) + token)
        except OSError:
            link.sock.close()
            raise
        ways.append(link.via)
        return link.sock

    return connect


def _via(ways: list[str]) -> str | None:
    """How the stream went: ``direct`` or ``relay``, or ``relay+direct`` (the ways in
    order) when reconnects went otherwise than the first connection."""
    return "+".join(dict.fromkeys(ways)) or None


def _acceptor(
    server: socket.socket, order: HandoffOrder, controller_url: str, ways: list[str]
) -> Accept:
    """The destination's next connection (on ``server`` or paired at the relay) that
    shows the handoff's token, read off the stream; others are turned away and the
    wait goes on. ``ways`` gets which way each one came."""
    want = (order.token or "").encode()

    def accept(timeout: float) -> socket.socket:
        deadline = time.monotonic() + timeout
        while True:
            try:
                link = handoff_link.accept(
                    server, order, controller_url, timeout=max(deadline - time.monotonic(), 0)
                )
            except HandoffLinkError as exc:
                raise TimeoutError(str(exc)) from exc
            conn = link.sock
            try:
                conn.settimeout(TOKEN_TIMEOUT_S)
                (length,) = struct.unpack("!H", _read(conn, 2))
                shown = _read(conn, length)
            except OSError:
                conn.close()
                continue
            if hmac.compare_digest(shown, want):
                ways.append(link.via)
                return conn
            log.warning("handoff %s: a connection without the handoff's token", order.id)
            conn.close()

    return accept


@dataclass
class VmHandoffs:
    """The VM handoffs running at one site, as background tasks by handoff id."""

    client: ControllerClient
    host: str  # the address peers reach this site at
    record: Callable[..., None]  # (order, instance id, phase, **data): an outbox event
    direct_timeout_s: float = handoff_link.DIRECT_TIMEOUT_S  # then the controller's relay
    resume_within_s: float = RESUME_WITHIN_S
    tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)

    def step(self, ops: InstanceOps, want: DesiredEntry, order: HandoffOrder) -> bool:
        """Start or follow this site's part; True once it is finished here."""
        if order.id in self.done:
            return True
        if order.id in self.failed:
            return False  # the controller withdraws the order
        task = self.tasks.get(order.id)
        if task is None:
            run = self._receive if order.role.value == "destination" else self._send
            task = asyncio.create_task(run(ops, want, order))
            task.add_done_callback(lambda _: self._finished(ops, order.id))
            self.tasks[order.id] = task
            return False
        return False

    def _finished(self, ops: InstanceOps, handoff_id: str) -> None:
        task = self.tasks.pop(handoff_id, None)
        if task is not None and not task.cancelled() and task.exception() is None:
            self.done.add(handoff_id)
        else:
            self.failed.add(handoff_id)
        wake = getattr(ops, "wake", None)
        if wake is not None:
            wake()

    async def _fail(self, order: HandoffOrder, reason: str) -> None:
        log.warning("handoff %s failed: %s", order.id, reason)
        with contextlib.suppress(ControllerUnreachableError, SyncError):
            await self.client.fail_handoff(order.id, reason)

    async def _base(self, ops: InstanceOps, want: DesiredEntry) -> tuple[str, Path, Path | None]:
        """The component's name, its base disk and the base VM RAM its overlay was
        made against (None: RAM is diffed against zeros), both cached here."""
        comp = want.instance.components[0]
        if comp.kind is not ComponentKind.VM or comp.image is None or ops.vm is None:
            raise CloudletError("a live handoff moves one VM component with a base image")
        base = await ops.vm.stager.ensure(ArtifactKind.IMAGE, comp.image, attempts=3)
        return comp.name, base, await ops.vm.memory_base(comp)

    # -- destination ----------------------------------------------------------------------

    async def _receive(self, ops: InstanceOps, want: DesiredEntry, order: HandoffOrder) -> None:
        from cloudlet.compute.qemu.handoff import receive_live

        inst = want.instance
        row = actual.get(ops.store, inst.id)
        if row is None:
            row = ops._track(inst, want.origin, ActualState.RELOCATING)
        if row.state is not ActualState.RELOCATING:
            row = ops._move(row, ActualState.RELOCATING, reason=f"receiving from {order.peer_site}")
        server = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET)
        try:
            name, base, memory_base = await self._base(ops, want)
            row = ops._assign_ports(inst, row)
            spec = ops._specs(inst, row)[name]
            assert spec.disk_image is not None
            spec.disk_image.parent.mkdir(parents=True, exist_ok=True)
            driver = await asyncio.to_thread(ops.drivers.for_kind, ComponentKind.VM)
            server.bind((self.host, 0))
            server.listen(1)
            port = server.getsockname()[1]
            await self.client.handoff_ready(order.id, f"{self.host}:{port}")
            t0 = time.monotonic()
            ways: list[str] = []
            await asyncio.to_thread(
                receive_live,
                _acceptor(server, order, self.client.base_url, ways),
                driver,  # type: ignore[arg-type]
                spec,
                base,
                memory_base,
                accept_within_s=ACCEPT_TIMEOUT_S,
            )
            seconds = round(time.monotonic() - t0, 3)
            self.record(order, inst.id, "received", seconds=seconds, via=_via(ways))
            log.info("handoff %s: VM running here after %.2fs", order.id, seconds)
        except Exception as exc:
            await self._fail(order, f"at {self.host}: {exc}")
            raise
        finally:
            server.close()

    # -- source -------------------------------------------------------------------------

    async def _send(self, ops: InstanceOps, want: DesiredEntry, order: HandoffOrder) -> None:
        from cloudlet.compute.qemu.handoff import (
            HandoffStats,
            HandoffUncertain,
            LiveSource,
            finish_source,
            send_live,
        )

        inst = want.instance
        row = actual.get(ops.store, inst.id)
        if row is not None and row.state is not ActualState.RELOCATING:
            ops._move(row, ActualState.RELOCATING, reason=f"handing off to {order.peer_site}")
        told = False  # the controller heard ``sent`` already
        ways: list[str] = []
        try:
            name, base, memory_base = await self._base(ops, want)
            driver = await asyncio.to_thread(ops.drivers.for_kind, ComponentKind.VM)
            wid = workload_id(inst.id, name)
            source = LiveSource.of(driver, wid, base, memory_base)  # type: ignore[arg-type, attr-defined]
            try:  # off the event loop: connects, reconnects and the transfer block
                connect = _dialer(order, self.client.base_url, self.direct_timeout_s, ways)
                stats = await asyncio.to_thread(
                    send_live, source, connect, resume_within_s=self.resume_within_s
                )
            except HandoffUncertain as exc:
                stats = exc.stats or HandoffStats()
                await self._settle(order, driver, wid, stats, exc)
                told = True
            await asyncio.to_thread(finish_source, driver, wid)  # type: ignore[arg-type]
        except Exception as exc:
            await self._fail(order, str(exc))
            raise
        self.record(
            order,
            inst.id,
            "sent",
            bytes=stats.bytes_sent,
            raw_bytes=stats.raw_bytes,
            device_state_bytes=stats.device_state_bytes,
            downtime_s=stats.downtime_s,
            seconds=stats.total_s,
            rounds=stats.rounds,
            reconnects=stats.reconnects,
            via=_via(ways),
            memory_base=memory_base.name if memory_base is not None else None,
        )
        log.info(
            "handoff %s: %d bytes in %d rounds, %d reconnects, %.3fs paused",
            order.id, stats.bytes_sent, len(stats.rounds), stats.reconnects, stats.downtime_s,
        )  # fmt: skip
        if not told:  # the VM runs there now: the controller must hear it, however long
            await self._tell_sent(order, stats)

    async def _tell_sent(self, order: HandoffOrder, stats: HandoffStats) -> None:
        """Report ``sent`` until the controller takes it.

        Raises:
            SyncError: the controller refuses (the handoff is no longer in flight).
        """
        sent = HandoffSent(
            bytes=stats.bytes_sent, downtime_s=stats.downtime_s, rounds=len(stats.rounds)
        )
        delay = 0.5
        while True:
            try:
                await self.client.handoff_sent(order.id, sent)
                return
            except ControllerUnreachableError:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _settle(
        self, order: HandoffOrder, driver: object, wid: str, stats: HandoffStats, exc: Exception
    ) -> None:
        """The link broke after the last frame and never came back: the destination may
        run the VM. The controller decides, with the guest paused here meanwhile:
        ``sent`` taken, the instance is the destination's (at worst it starts afresh
        there: a failover's loss, never two copies); refused (the destination gave the
        handoff up, so it does not run it), the guest runs on here.

        Raises:
            HandoffError: refused; the guest runs on here.
        """
        from cloudlet.compute.qemu.handoff import HandoffError, resume_source

        log.warning("handoff %s: %s; asking the controller", order.id, exc)
        try:
            await self._tell_sent(order, stats)
        except SyncError as refused:
            await asyncio.to_thread(resume_source, driver, wid)  # type: ignore[arg-type]
            raise HandoffError(f"handoff failed; the VM runs on at the source: {refused}") from exc
