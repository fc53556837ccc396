"""Periodic checkpoints at a site, and starting an instance from one after a failover.

Taking: every ``checkpoint_interval_s`` of its app, each instance running here at its
desired epoch (and not being handed off) gets a checkpoint, one at a time, in a loop
of its own (the reconciler never waits for one): a process instance's is a tar.gz
of its state directories; a VM's is its disk and RAM chunks that differ from its
base, and its device state (:mod:`cloudlet.compute.qemu.checkpoint`; the guest is
paused only for the last round). It is written to ``spool/<instance>.ckpt`` with a
``.json`` beside it, then uploaded when the controller answers; while it does not,
only the newest one per instance is kept, and sent once the link returns. Each is a
``checkpoint`` event: ``taken`` (bytes, pause), then ``sent`` or ``refused`` (the
controller refuses one from an epoch the instance left).

Restoring: a desired instance whose entry says ``restore`` (a failover) starts from
that checkpoint once at its epoch: a process instance's archive is unpacked into
its state directory before it starts; a VM's disk, RAM and device state are rebuilt
on a copy of the base (instead of synthesis) and the VM resumes from them. A
checkpoint that cannot be had (gone, corrupt) is given up: the instance starts from
its app's definition, as a failover without one does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloudlet._digest import file_blake3
from cloudlet.agent import actual, desired, outbox
from cloudlet.agent._specs import DriverSet, workload_id
from cloudlet.agent._wait import sleep_or
from cloudlet.agent.client import ControllerClient
from cloudlet.agent.desired import DesiredEntry
from cloudlet.agent.handoff import pack, unpack
from cloudlet.agent.store import Store
from cloudlet.agent.vm import VmBuilder
from cloudlet.errors import CloudletError, ControllerUnreachableError, SyncError
from cloudlet.schemas import ActualState, Component, ComponentKind, DesiredState, EventKind
from cloudlet.schemas.artifacts import ArtifactKind
from cloudlet.schemas.mobility import CheckpointKind, CheckpointRestore

if TYPE_CHECKING:
    from cloudlet.agent._instance_ops import InstanceOps

log = logging.getLogger(__name__)

#: Seconds between the loop's looks at what is due.
TICK_S = 1.0


def _restored_key(instance_id: str) -> str:
    return f"restore:{instance_id}"


@dataclass
class Checkpointer:
    """Takes and sends one site's checkpoints; restores the ones failovers bring."""

    store: Store
    state_root: Path
    spool: Path
    drivers: DriverSet
    vm: VmBuilder | None
    client: ControllerClient | None
    reachable: Callable[[], bool | None] = lambda: None
    #: Instance id -> monotonic time of its last checkpoint (or of when it was first seen).
    last: dict[str, float] = field(default_factory=dict)

    # -- taking ---------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, tick: float = TICK_S) -> None:
        """Take what is due and send what waits, until ``stop``."""
        self.spool.mkdir(parents=True, exist_ok=True)
        while not stop.is_set():
            try:
                await self.once()
            except Exception:
                log.exception("checkpoint pass failed")
            await sleep_or(stop, tick)

    async def once(self) -> None:
        """One pass: every due checkpoint, one at a time; then the uploads."""
        now = time.monotonic()
        wanted = desired.entries(self.store)
        for instance_id in list(self.last):
            if instance_id not in wanted:
                self.last.pop(instance_id, None)
        for want in wanted.values():
            if not self._eligible(want):
                self.last.pop(want.id, None)
                continue
            interval = want.instance.checkpoint_interval_s or 0.0
            since = self.last.setdefault(want.id, now)
            if now - since < interval:
                continue
            self.last[want.id] = time.monotonic()
            try:
                await self.take(want)
            except (CloudletError, OSError) as exc:
                log.warning("checkpoint of %s failed: %s", want.id, exc)
                self._event(want.id, "failed", reason=str(exc)[:500])
        if self.client is not None and self.reachable() is not False:
            await self.send_pending()

    def _eligible(self, want: DesiredEntry) -> bool:
        inst = want.instance
        if not inst.checkpoint_interval_s or want.state is not DesiredState.RUNNING:
            return False
        if inst.handoff is not None:
            return False  # a move is under way: its own transfer carries the state
        row = actual.get(self.store, inst.id)
        return row is not None and row.state is ActualState.RUNNING and row.epoch == inst.epoch

    def _files(self, instance_id: str) -> tuple[Path, Path]:
        return self.spool / f"{instance_id}.ckpt", self.spool / f"{instance_id}.json"

    async def take(self, want: DesiredEntry) -> dict[str, Any]:
        """Checkpoint the instance into the spool (replacing an unsent older one).

        Raises:
            CloudletError: the VM could not be checkpointed (it runs on).
            OSError: the spool could not be written.
        """
        inst = want.instance
        self.spool.mkdir(parents=True, exist_ok=True)
        data, meta = self._files(inst.id)
        part = data.with_suffix(".part")
        taken_at = datetime.now(UTC)
        t0 = time.monotonic()
        facts: dict[str, Any] = {}
        vms = [c for c in inst.components if c.kind is ComponentKind.VM]
        if vms:
            kind = CheckpointKind.VM
            stats = await self._take_vm(inst.id, vms[0], part)
            facts = {"pause_s": stats.pause_s, "rounds": len(stats.rounds)}
        else:
            kind = CheckpointKind.PROCESS
            archive = await asyncio.to_thread(pack, self.state_root / inst.id)
            await asyncio.to_thread(part.write_bytes, archive)
        os.replace(part, data)
        record = {
            "id": uuid.uuid4().hex,
            "instance": inst.id,
            "epoch": inst.epoch,
            "app_version": inst.app_version,
            "kind": kind.value,
            "taken_at": taken_at.isoformat(),
            "bytes": data.stat().st_size,
            **facts,
        }
        await asyncio.to_thread(meta.write_text, json.dumps(record))
        seconds = round(time.monotonic() - t0, 3)
        self._event(
            inst.id, "taken", checkpoint=record["id"], kind=kind.value,
            bytes=record["bytes"], seconds=seconds, **facts,
        )  # fmt: skip
        log.info("checkpoint %s of %s: %d bytes", record["id"], inst.id, record["bytes"])
        return record

    async def _take_vm(self, instance_id: str, comp: Component, out: Path) -> Any:
        from cloudlet.compute.qemu.checkpoint import write_checkpoint
        from cloudlet.compute.qemu.handoff import LiveSource

        base, memory_base = await self._bases(comp)
        driver = await asyncio.to_thread(self.drivers.for_kind, ComponentKind.VM)
        source = LiveSource.of(driver, workload_id(instance_id, comp.name), base, memory_base)  # type: ignore[arg-type]
        return await asyncio.to_thread(write_checkpoint, source, out)

    async def _bases(self, comp: Component) -> tuple[Path, Path | None]:
        """The component's cached base disk and the base RAM its overlay was made against."""
        if self.vm is None or comp.image is None:
            raise CloudletError("a VM checkpoint needs the VM builder and a base image")
        base = await self.vm.stager.ensure(ArtifactKind.IMAGE, comp.image, attempts=3)
        return base, await self.vm.memory_base(comp)

    async def send_pending(self) -> None:
        """Upload every spooled checkpoint; keep those the controller cannot take now."""
        assert self.client is not None
        for meta in sorted(self.spool.glob("*.json")):
            try:
                record = json.loads(meta.read_text())
            except (OSError, ValueError):
                meta.unlink(missing_ok=True)
                continue
            data = meta.with_suffix(".ckpt")
            if not data.is_file():
                meta.unlink(missing_ok=True)
                continue
            params: dict[str, str | int] = {
                k: record[k] for k in ("instance", "epoch", "app_version", "kind", "taken_at")
            }
            if record.get("pause_s") is not None:
                params["pause_s"] = str(record["pause_s"])
            t0 = time.monotonic()
            try:
                await self.client.upload_checkpoint(record["id"], data, params)
            except ControllerUnreachableError as exc:
                log.info("checkpoint %s not sent yet: %s", record["id"], exc)
                return
            except SyncError as exc:
                log.warning("checkpoint %s refused: %s", record["id"], exc)
                self._event(record["instance"], "refused", checkpoint=record["id"],
                            reason=str(exc)[:500])  # fmt: skip
            else:
                self._event(
                    record["instance"], "sent", checkpoint=record["id"], bytes=record["bytes"],
                    seconds=round(time.monotonic() - t0, 3),
                )  # fmt: skip
            # Takes and sends run in this one loop: no newer take replaced it meanwhile.
            meta.unlink(missing_ok=True)
            data.unlink(missing_ok=True)

    def _event(self, instance_id: str, phase: str, **data: Any) -> None:
        outbox.record(self.store, EventKind.CHECKPOINT, instance=instance_id,
                      data={"phase": phase, **data})  # fmt: skip

    # -- restoring --------------------------------------------------------------------------

    def _done(self, want: DesiredEntry, restore: CheckpointRestore) -> bool:
        return self.store.get_meta(_restored_key(want.id)) == f"{want.instance.epoch}:{restore.id}"

    def _mark(self, want: DesiredEntry, restore: CheckpointRestore) -> None:
        self.store.set_meta(_restored_key(want.id), f"{want.instance.epoch}:{restore.id}")

    async def _download(self, restore: CheckpointRestore) -> Path:
        """The checkpoint's bytes in the spool, checked against its digest.

        Raises:
            ControllerUnreachableError: try again later.
            SyncError: the controller has no such checkpoint for this site.
            CloudletError: the bytes are not the checkpoint's.
        """
        if self.client is None:
            raise ControllerUnreachableError("no controller to fetch the checkpoint from")
        self.spool.mkdir(parents=True, exist_ok=True)
        path = self.spool / f"restore-{restore.id}"
        try:
            await self.client.fetch_checkpoint(restore.id, path)
            digest = await asyncio.to_thread(file_blake3, path)
            if digest != restore.digest:
                raise CloudletError(f"checkpoint {restore.id}: its bytes hash to {digest}")
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path

    async def restore_process(self, ops: InstanceOps, want: DesiredEntry) -> bool:
        """Before a failed-over process instance starts: its state from the checkpoint.
        True: go on starting it; False: wait (the controller is unreachable)."""
        restore = want.instance.restore
        if (
            restore is None
            or restore.kind is not CheckpointKind.PROCESS
            or self._done(want, restore)
        ):
            return True
        t0 = time.monotonic()
        try:
            path = await self._download(restore)
        except ControllerUnreachableError as exc:
            row = actual.get(self.store, want.id) or ops._track(
                want.instance, want.origin, ActualState.PENDING
            )
            ops._move(row, ActualState.FETCHING, reason=f"waiting for its checkpoint: {exc}")
            return False
        except CloudletError as exc:
            self._give_up(want, restore, exc)
            return True
        try:
            archive = await asyncio.to_thread(path.read_bytes)
            await asyncio.to_thread(unpack, archive, self.state_root / want.id)
        except Exception as exc:  # a corrupt archive: start from the definition
            self._give_up(want, restore, exc)
            return True
        finally:
            path.unlink(missing_ok=True)
        self._restored(want, restore, t0)
        return True

    async def restore_vm(self, want: DesiredEntry, comp: Component) -> bool:
        """Instead of synthesis: the VM's disk, RAM and device state from the checkpoint.
        True if it rebuilt them; False: synthesize as usual (none, or given up).

        Raises:
            ControllerUnreachableError: try again later.
        """
        from cloudlet.compute.qemu.checkpoint import restore_checkpoint

        restore = want.instance.restore
        if restore is None or restore.kind is not CheckpointKind.VM or self._done(want, restore):
            return False
        assert self.vm is not None
        t0 = time.monotonic()
        try:
            base, memory_base = await self._bases(comp)
            path = await self._download(restore)
        except ControllerUnreachableError:
            raise
        except CloudletError as exc:
            self._give_up(want, restore, exc)
            return False
        try:
            await asyncio.to_thread(
                restore_checkpoint,
                path,
                self.vm.disk_path(want.id, comp),
                self.vm.memory_path(want.id, comp),
                base,
                memory_base,
                want.instance.resources.memory_mib,
            )
        except CloudletError as exc:
            self._give_up(want, restore, exc)
            return False
        finally:
            path.unlink(missing_ok=True)
        self._restored(want, restore, t0)
        return True

    def _restored(self, want: DesiredEntry, restore: CheckpointRestore, t0: float) -> None:
        self._mark(want, restore)
        age = (datetime.now(UTC) - restore.taken_at).total_seconds()
        self._event(
            want.id, "restored", checkpoint=restore.id, kind=restore.kind.value,
            bytes=restore.size, seconds=round(time.monotonic() - t0, 3), age_s=round(age, 3),
        )  # fmt: skip
        log.info("instance %s: restored from checkpoint %s", want.id, restore.id)

    def _give_up(self, want: DesiredEntry, restore: CheckpointRestore, exc: BaseException) -> None:
        log.warning("instance %s: checkpoint %s unusable (%s)", want.id, restore.id, exc)
        self._mark(want, restore)
        self._event(want.id, "unusable", checkpoint=restore.id, reason=str(exc)[:500])
