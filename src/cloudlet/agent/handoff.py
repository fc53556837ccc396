"""Handoff orders at a site: hand an instance over (source) or take it in (destination).

A process instance moves by stop, copy of its state directories, start. The
source stops its workloads (state ``relocating``), packs ``state_root/<instance>``
into a tar archive and uploads it to the controller, which then gives the
instance to the destination at the next epoch; the source's copy goes when its
desired state says the instance departed. The destination downloads the archive,
unpacks it and only then starts the instance. Each side records a ``handoff``
event with its phase, bytes and seconds. Every step is idempotent: a pass that
finds its step done (a meta key per handoff) moves on, and one that cannot reach
the controller tries again at the next pass.
"""

from __future__ import annotations

import asyncio
import io
import logging
import shutil
import tarfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from cloudlet.agent import actual, outbox
from cloudlet.agent.actual import ActualRow
from cloudlet.agent.client import ControllerClient
from cloudlet.agent.desired import DesiredEntry
from cloudlet.agent.handoff_link import DIRECT_TIMEOUT_S
from cloudlet.agent.store import Store
from cloudlet.agent.vm_handoff import RESUME_WITHIN_S, VmHandoffs
from cloudlet.errors import ControllerUnreachableError, DriverError, SyncError
from cloudlet.schemas import ActualState, EventKind
from cloudlet.schemas.mobility import HandoffOrder, HandoffRole

if TYPE_CHECKING:
    from cloudlet.agent._instance_ops import InstanceOps

log = logging.getLogger(__name__)


def pack(directory: Path) -> bytes:
    """A gzip'd tar of ``directory``'s contents (empty archive if it does not exist)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        if directory.is_dir():
            for child in sorted(directory.iterdir()):
                tar.add(child, arcname=child.name)
    return buf.getvalue()


def unpack(archive: bytes, directory: Path) -> None:
    """Replace ``directory``'s contents with the archive's (no paths outside it)."""
    tmp = directory.with_name(directory.name + ".incoming")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        tar.extractall(tmp, filter="data")
    shutil.rmtree(directory, ignore_errors=True)
    tmp.rename(directory)


class HandoffRunner:
    """Carries out the handoff orders in a site's desired state."""

    def __init__(
        self,
        store: Store,
        state_root: Path,
        client: ControllerClient,
        host: str = "127.0.0.1",
        direct_timeout_s: float = DIRECT_TIMEOUT_S,
        resume_within_s: float = RESUME_WITHIN_S,
    ) -> None:
        self.store = store
        self.state_root = state_root
        self.client = client
        self.vms = VmHandoffs(client, host, self._event, direct_timeout_s, resume_within_s)

    def _done(self, order: HandoffOrder) -> bool:
        return self.store.get_meta(f"handoff:{order.id}") is not None

    def _mark(self, order: HandoffOrder) -> None:
        self.store.set_meta(f"handoff:{order.id}", order.role.value)

    def _event(self, order: HandoffOrder, instance_id: str, phase: str, **data: object) -> None:
        with self.store.transaction() as conn:
            outbox.append(
                conn,
                EventKind.HANDOFF,
                instance=instance_id,
                data={"handoff": order.id, "phase": phase, "peer": order.peer_site, **data},
            )

    async def prepare(self, ops: InstanceOps, want: DesiredEntry, row: ActualRow | None) -> bool:
        """Do this site's part of the order; True when the instance may start here now."""
        order = want.instance.handoff
        assert order is not None
        if order.kind == "vm":
            # Either side: never start or adopt here while the order stands; the
            # destination's VM is adopted once the instance is its own (no order).
            if row is None and order.role is HandoffRole.DESTINATION:
                ops._track(want.instance, want.origin, ActualState.RELOCATING)
            self.vms.step(ops, want, order)
            return False
        if order.role is HandoffRole.SOURCE:
            await self._send(ops, want, row, order)
            return False
        return await self._receive(ops, want, row, order)

    async def _send(
        self, ops: InstanceOps, want: DesiredEntry, row: ActualRow | None, order: HandoffOrder
    ) -> None:
        inst = want.instance
        if row is None:
            row = ops._track(inst, want.origin, ActualState.RELOCATING)
        if self._done(order):
            return  # sent: the departure will remove the copy here
        t0 = time.monotonic()
        if row.state is not ActualState.RELOCATING:
            row = ops._move(row, ActualState.RELOCATING, reason=f"handing off to {order.peer_site}")
        try:
            await ops._stop_workloads(inst.id, inst.components)
        except DriverError as exc:
            await self._give_up(ops, row, order, f"stopping at the source failed: {exc}")
            return
        stopped = time.monotonic() - t0
        archive = await asyncio.to_thread(pack, self.state_root / inst.id)
        try:
            await self.client.send_handoff_state(order.id, archive)
        except ControllerUnreachableError as exc:
            log.info("handoff %s: state not sent yet (%s); retrying", order.id, exc)
            return
        except SyncError as exc:  # the controller gave the handoff up meanwhile
            log.warning("handoff %s refused: %s", order.id, exc)
            self._mark(order)
            return
        self._mark(order)
        self._event(
            order,
            inst.id,
            "sent",
            bytes=len(archive),
            stop_s=round(stopped, 3),
            seconds=round(time.monotonic() - t0, 3),
        )
        log.info("handoff %s: sent %d bytes to %s", order.id, len(archive), order.peer_site)

    async def _give_up(
        self, ops: InstanceOps, row: ActualRow, order: HandoffOrder, reason: str
    ) -> None:
        try:
            await self.client.fail_handoff(order.id, reason)
        except (ControllerUnreachableError, SyncError) as exc:
            log.warning("handoff %s: cannot report the failure (%s)", order.id, exc)
            return
        self._mark(order)
        ops._move(row, ActualState.FAILED, reason=reason)

    async def _receive(
        self, ops: InstanceOps, want: DesiredEntry, row: ActualRow | None, order: HandoffOrder
    ) -> bool:
        inst = want.instance
        if self._done(order):
            return True
        if row is None:
            row = ops._track(inst, want.origin, ActualState.RELOCATING)
        t0 = time.monotonic()
        try:
            archive = await self.client.fetch_handoff_state(order.id)
        except (ControllerUnreachableError, SyncError) as exc:
            ops._move(row, ActualState.RELOCATING, reason=f"waiting for the state: {exc}")
            return False
        await asyncio.to_thread(unpack, archive, self.state_root / inst.id)
        self._mark(order)
        self._event(
            order, inst.id, "received", bytes=len(archive), seconds=round(time.monotonic() - t0, 3)
        )
        log.info("handoff %s: took %d bytes from %s", order.id, len(archive), order.peer_site)
        current = actual.get(self.store, inst.id)
        if current is not None and current.state is ActualState.RELOCATING:
            ops._move(current, ActualState.PENDING, reason=f"state from {order.peer_site}")
        return True
