"""Live handoff of a VM instance, each site's part (the engine is compute/qemu/handoff.py).

Destination: make sure the base image is cached, listen on a port of its own, tell
the controller where (``ready``), take the one VM stream that shows the handoff's
token, and run the VM from it. Source (told once the destination is ready): stream
the running VM there, site to site, or through the controller's relay when the
destination is out of reach (``handoff_link``); once the destination runs it, end
the paused copy here and tell the controller (``sent``), which then gives the
instance to the destination at the next epoch. Either side that fails says so (``fail``): the source
guest runs on, and the destination's partial copy goes by its desired state.
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

log = logging.getLogger(__name__)

#: Longest a destination waits for the source to connect.
ACCEPT_TIMEOUT_S = 120.0


@dataclass
class VmHandoffs:
    """The VM handoffs running at one site, as background tasks by handoff id."""

    client: ControllerClient
    host: str  # the address peers reach this site at
    record: Callable[..., None]  # (order, instance id, phase, **data): an outbox event
    direct_timeout_s: float = handoff_link.DIRECT_TIMEOUT_S  # then the controller's relay
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
            server.settimeout(ACCEPT_TIMEOUT_S)
            port = server.getsockname()[1]
            await self.client.handoff_ready(order.id, f"{self.host}:{port}")
            t0 = time.monotonic()
            link = await asyncio.to_thread(
                handoff_link.accept, server, order, self.client.base_url, timeout=ACCEPT_TIMEOUT_S
            )
            with link.sock as conn:
                (length,) = struct.unpack("!H", await asyncio.to_thread(conn.recv, 2))
                shown = await asyncio.to_thread(conn.recv, length)
                if not hmac.compare_digest(shown, (order.token or "").encode()):
                    raise CloudletError("a peer connected without the handoff's token")
                await asyncio.to_thread(
                    receive_live,
                    conn,
                    driver,
                    spec,
                    base,
                    memory_base,  # type: ignore[arg-type]
                )
            seconds = round(time.monotonic() - t0, 3)
            self.record(order, inst.id, "received", seconds=seconds, via=link.via)
            log.info("handoff %s: VM running here after %.2fs", order.id, seconds)
        except Exception as exc:
            await self._fail(order, f"at {self.host}: {exc}")
            raise
        finally:
            server.close()

    # -- source -------------------------------------------------------------------------

    async def _send(self, ops: InstanceOps, want: DesiredEntry, order: HandoffOrder) -> None:
        from cloudlet.compute.qemu.handoff import (
            HandoffError,
            LiveSource,
            finish_source,
            send_live,
        )

        inst = want.instance
        row = actual.get(ops.store, inst.id)
        if row is not None and row.state is not ActualState.RELOCATING:
            ops._move(row, ActualState.RELOCATING, reason=f"handing off to {order.peer_site}")
        try:
            name, base, memory_base = await self._base(ops, want)
            driver = await asyncio.to_thread(ops.drivers.for_kind, ComponentKind.VM)
            wid = workload_id(inst.id, name)
            source = LiveSource.of(driver, wid, base, memory_base)  # type: ignore[arg-type, attr-defined]
            token = (order.token or "").encode()
            try:  # off the event loop: a silent peer takes seconds to give up on
                link = await asyncio.to_thread(
                    handoff_link.dial, order, self.client.base_url,
                    direct_timeout_s=self.direct_timeout_s,
                )  # fmt: skip
            except HandoffLinkError as exc:
                raise HandoffError(
                    f"handoff failed; the VM runs on at the source: cannot reach the "
                    f"destination: {exc}"
                ) from exc
            with link.sock as sock:
                sock.sendall(struct.pack("!H", len(token)) + token)
                stats = await asyncio.to_thread(send_live, source, sock)
            await asyncio.to_thread(finish_source, driver, wid)  # type: ignore[arg-type]
        except Exception as exc:
            await self._fail(order, str(exc))
            raise
        sent = HandoffSent(
            bytes=stats.bytes_sent, downtime_s=stats.downtime_s, rounds=len(stats.rounds)
        )
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
            via=link.via,
            memory_base=memory_base.name if memory_base is not None else None,
        )
        log.info(
            "handoff %s: %d bytes in %d rounds, %.3fs paused",
            order.id, stats.bytes_sent, len(stats.rounds), stats.downtime_s,
        )  # fmt: skip
        delay = 0.5
        while True:  # the VM runs there now: the controller must hear it, however long
            try:
                await self.client.handoff_sent(order.id, sent)
                return
            except ControllerUnreachableError:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
