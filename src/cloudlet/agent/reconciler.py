"""The reconciler: brings actual state to desired state through the compute driver.

It runs on every desired change and every ``reconcile_interval_s``; the periodic
pass is also how crashed workloads are noticed (``driver.status``). It reads only
the local store, so it works the same with the controller unreachable, and its
first pass after an agent start adopts workloads that kept running or restarts
those that did not. Each instance becomes one workload per component, named
``<instance-id>-<component>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import socket
import time
from collections.abc import Callable, Container, Iterable

from cloudlet.agent import actual, desired
from cloudlet.agent._wait import sleep_or
from cloudlet.agent.actual import ActualRow
from cloudlet.agent.desired import DesiredEntry
from cloudlet.agent.store import ALIVE_AT, Store
from cloudlet.compute import ComputeDriver, WorkloadSpec, WorkloadState, WorkloadStatus
from cloudlet.errors import DriverError, WorkloadNotFoundError
from cloudlet.schemas import (
    ActualState,
    Component,
    ComponentKind,
    DesiredInstance,
    DesiredState,
    InstanceOrigin,
)

log = logging.getLogger(__name__)

VM_UNSUPPORTED = "vm components need the qemu driver"
_ACTIVE = {ActualState.PENDING, ActualState.STARTING, ActualState.RUNNING}


def workload_id(instance_id: str, component: str) -> str:
    return f"{instance_id}-{component}"


def free_port(host: str, taken: Container[int] = ()) -> int:
    """A port the OS considers free on ``host`` right now, and not in ``taken``.

    ``taken`` holds the ports already given to other instances: their workloads may
    be stopped, so the OS could hand the same port out again.
    """
    for _ in range(100):
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in taken:
            return port
    raise DriverError(f"no free port on {host} outside the {len(taken)} already assigned")


def spec_digest(specs: Iterable[WorkloadSpec]) -> str:
    """A fingerprint of an instance's workload specs, to notice a changed definition."""
    body = json.dumps([dataclasses.asdict(s) for s in specs], sort_keys=True, default=str)
    return hashlib.sha256(body.encode()).hexdigest()


def build_spec(inst: DesiredInstance, comp: Component, port: int | None) -> WorkloadSpec:
    """The driver's view of one component of one instance."""
    env = dict(comp.env)
    env.update({"CLOUDLET_INSTANCE": inst.id, "CLOUDLET_APP": inst.app})
    command = list(comp.command)
    if port is not None:
        env["PORT"] = str(port)
        command = [a.replace("${PORT}", str(port)).replace("$PORT", str(port)) for a in command]
    return WorkloadSpec(
        workload_id=workload_id(inst.id, comp.name),
        command=tuple(command),
        env=env,
        port=port,
        guest_port=comp.guest_port,
        vcpus=inst.resources.vcpus,
        memory_mib=inst.resources.memory_mib,
    )


class Reconciler:
    """Drives one site's instances toward their desired state, one pass at a time."""

    def __init__(
        self,
        store: Store,
        driver: ComputeDriver,
        *,
        workload_host: str = "127.0.0.1",
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.driver = driver
        self.workload_host = workload_host
        self.on_change = on_change
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        alive = store.get_meta(ALIVE_AT)
        # When the previous agent was last seen alive: a workload found dead at the
        # first pass died no later than that, so its usage ends there.
        self._boot_alive_at: float | None = float(alive) if alive else None
        self.passes = 0
        #: The desired revision the last complete pass acted on (what reports claim).
        self.applied_revision = 0

    def wake(self) -> None:
        """Ask for a pass soon (desired state changed)."""
        self._wake.set()

    async def run(self, interval: float, stop: asyncio.Event) -> None:
        """Reconcile on every wake-up and every ``interval`` seconds until ``stop``."""
        while not stop.is_set():
            self._wake.clear()
            try:
                await self.reconcile_once()
            except Exception:
                log.exception("reconcile pass failed; retrying in %.1fs", interval)
            await sleep_or(stop, interval, self._wake)

    async def reconcile_once(self) -> None:
        """One pass over every instance the site knows of."""
        async with self._lock:
            cursor = self.store.cursor
            wanted = desired.entries(self.store)
            held = {row.id: row for row in actual.list_all(self.store)}
            for instance_id in sorted(set(wanted) | set(held)):
                try:
                    await self._reconcile(wanted.get(instance_id), held.get(instance_id))
                except Exception:
                    log.exception("reconciling instance %s failed", instance_id)
            self.store.set_meta(ALIVE_AT, time.time())
            self.passes += 1
            self.applied_revision = cursor

    async def _reconcile(self, want: DesiredEntry | None, row: ActualRow | None) -> None:
        if want is None:
            if row is not None and row.state is not ActualState.DELETED:
                # Nothing asks for it any more (its desired entry is gone): remove it.
                await self._ensure_deleted(row.id, [], row)
            return
        if want.state is DesiredState.RUNNING:
            await self._ensure_running(want, row)
        elif want.state is DesiredState.STOPPED:
            await self._ensure_stopped(want, row)
        else:
            await self._ensure_deleted(want.id, want.instance.components, row)
            if row is None:
                desired.forget(self.store, [want.id])

    # -- helpers ---------------------------------------------------------------------

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def _move(
        self,
        row: ActualRow,
        state: ActualState,
        *,
        reason: str | None = None,
        endpoint: str | None = None,
        applied_revision: int | None = None,
        usage_end: float | None = None,
    ) -> ActualRow:
        if (state, reason, endpoint) == (row.state, row.reason, row.endpoint):
            # Nothing anyone needs to hear about; just remember the revision.
            if applied_revision is None:
                return row
            return actual.set_applied(self.store, row, applied_revision)
        log.info("instance %s: %s -> %s%s", row.id, row.state, state, f" ({reason})" * bool(reason))
        new = actual.transition(
            self.store,
            row,
            state,
            reason=reason,
            endpoint=endpoint,
            applied_revision=applied_revision,
            usage_end=usage_end,
        )
        self._changed()
        return new

    async def _status(self, wid: str) -> WorkloadStatus:
        return await asyncio.to_thread(self.driver.status, wid)

    def _endpoint(
        self, row: ActualRow, comps: list[Component], st: dict[str, WorkloadStatus]
    ) -> str | None:
        for comp in comps:
            if comp.name in row.ports:
                return st[comp.name].endpoint or f"{self.workload_host}:{row.ports[comp.name]}"
        return None

    def _track(
        self, inst: DesiredInstance, origin: InstanceOrigin, state: ActualState
    ) -> ActualRow:
        row = actual.create(
            self.store,
            instance_id=inst.id,
            name=inst.name,
            app=inst.app,
            project=inst.project,
            origin=origin,
            state=state,
        )
        self._changed()
        return row

    # -- desired: running ------------------------------------------------------------

    def _assign_ports(self, inst: DesiredInstance, row: ActualRow) -> ActualRow:
        """Give each component that serves a port one host port, once, persisted."""
        ports = dict(row.ports)
        missing = [c for c in inst.components if c.port and c.name not in ports]
        if not missing:
            return row
        taken = {p for other in actual.list_all(self.store) for p in other.ports.values()}
        for comp in missing:
            ports[comp.name] = free_port(self.workload_host, taken)
            taken.add(ports[comp.name])
        return actual.set_ports(self.store, row, ports)

    async def _ensure_running(self, want: DesiredEntry, row: ActualRow | None) -> None:
        inst = want.instance
        if row is None or row.state is ActualState.DELETED:
            if row is not None:
                actual.forget(self.store, [row.id])
            row = self._track(inst, want.origin, ActualState.PENDING)
        if row.state is ActualState.FAILED and row.applied_revision >= want.revision:
            return  # stays failed until the desired entry changes
        if any(c.kind is ComponentKind.VM for c in inst.components) and not (
            self.driver.capabilities.get("vm", False)
        ):
            self._move(
                row, ActualState.FAILED, reason=VM_UNSUPPORTED, applied_revision=want.revision
            )
            return
        row = self._assign_ports(inst, row)
        specs = {c.name: build_spec(inst, c, row.ports.get(c.name)) for c in inst.components}
        digest = spec_digest(specs.values())
        if row.spec_digest is None:  # first start, or a store from before digests
            row = actual.set_spec_digest(self.store, row, digest)
        # Only a newer desired entry replaces workloads (an agent upgrade that builds
        # specs differently must not restart everything).
        redefined = row.spec_digest != digest and row.applied_revision < want.revision
        comps = inst.components
        st = {c.name: await self._status(workload_id(inst.id, c.name)) for c in comps}
        if not redefined and all(s.state is WorkloadState.RUNNING for s in st.values()):
            if row.state is not ActualState.RUNNING:
                if self.passes == 0:
                    log.info("instance %s: adopted running workloads", row.id)
                self._move(
                    row,
                    ActualState.RUNNING,
                    endpoint=self._endpoint(row, comps, st),
                    applied_revision=want.revision,
                )
            else:
                actual.set_applied(self.store, row, want.revision)
            return
        gave_up = [s for s in st.values() if s.state is WorkloadState.FAILED]
        if not redefined and gave_up and row.state in (ActualState.RUNNING, ActualState.STARTING):
            reason = gave_up[0].reason or f"workload {gave_up[0].workload_id} failed"
            self._move(row, ActualState.FAILED, reason=reason, applied_revision=want.revision)
            return
        await self._start(want, row, st, specs, digest)

    async def _start(
        self,
        want: DesiredEntry,
        row: ActualRow,
        st: dict[str, WorkloadStatus],
        specs: dict[str, WorkloadSpec],
        digest: str,
    ) -> None:
        inst = want.instance
        usage_end = None
        reason = None
        replace = row.spec_digest != digest
        if replace:
            reason = "definition changed; restarting"
        elif row.state is ActualState.RUNNING:
            reason = "workload was not running; restarting"
            if self.passes == 0:
                usage_end = self._boot_alive_at
        if row.state is not ActualState.STARTING:
            row = self._move(row, ActualState.STARTING, reason=reason, usage_end=usage_end)
        try:
            if replace:
                for comp in inst.components:
                    await asyncio.to_thread(self.driver.delete, workload_id(inst.id, comp.name))
                st = {n: WorkloadStatus(s.workload_id, WorkloadState.ABSENT) for n, s in st.items()}
                row = actual.set_spec_digest(self.store, row, digest)
            for comp in inst.components:
                wid = workload_id(inst.id, comp.name)
                state = st[comp.name].state
                if state is WorkloadState.RUNNING:
                    continue
                if state is WorkloadState.FAILED:
                    await asyncio.to_thread(self.driver.delete, wid)
                    state = WorkloadState.ABSENT
                if state is WorkloadState.ABSENT:
                    await asyncio.to_thread(self.driver.create, specs[comp.name])
                if state is WorkloadState.SUSPENDED and self.driver.capabilities.get("suspend"):
                    st[comp.name] = await asyncio.to_thread(self.driver.resume, wid)
                else:
                    st[comp.name] = await asyncio.to_thread(self.driver.start, wid)
        except DriverError as exc:
            log.warning("instance %s failed to start: %s", inst.id, exc)
            self._move(row, ActualState.FAILED, reason=str(exc), applied_revision=want.revision)
            return
        if all(s.state is WorkloadState.RUNNING for s in st.values()):
            self._move(
                row,
                ActualState.RUNNING,
                endpoint=self._endpoint(row, inst.components, st),
                applied_revision=want.revision,
            )
        elif failed := [s for s in st.values() if s.state is WorkloadState.FAILED]:
            reason = failed[0].reason or f"workload {failed[0].workload_id} failed"
            self._move(row, ActualState.FAILED, reason=reason, applied_revision=want.revision)

    # -- desired: stopped / deleted --------------------------------------------------

    async def _stop_workloads(self, instance_id: str, comps: list[Component]) -> None:
        for comp in comps:
            with contextlib.suppress(WorkloadNotFoundError):
                await asyncio.to_thread(self.driver.stop, workload_id(instance_id, comp.name))

    async def _ensure_stopped(self, want: DesiredEntry, row: ActualRow | None) -> None:
        inst = want.instance
        if row is None or row.state is ActualState.DELETED:
            if row is not None:
                actual.forget(self.store, [row.id])
            self._track(inst, want.origin, ActualState.STOPPED)
            return
        if row.state is ActualState.STOPPED:
            # Catch a workload started behind our back (or left over by a crash).
            for comp in inst.components:
                s = await self._status(workload_id(inst.id, comp.name))
                if s.state is WorkloadState.RUNNING:
                    await self._stop_workloads(inst.id, inst.components)
                    break
            actual.set_applied(self.store, row, want.revision)
            return
        if row.state in _ACTIVE:
            row = self._move(row, ActualState.STOPPING)
        try:
            await self._stop_workloads(inst.id, inst.components)
        except DriverError as exc:
            self._move(row, ActualState.FAILED, reason=f"stop failed: {exc}")
            return
        self._move(row, ActualState.STOPPED, applied_revision=want.revision)

    async def _ensure_deleted(
        self, instance_id: str, comps: list[Component], row: ActualRow | None
    ) -> None:
        if row is not None and row.state is ActualState.DELETED:
            return  # forgotten once the controller acknowledges the report
        if row is not None and row.state in _ACTIVE:
            row = self._move(row, ActualState.STOPPING)
        # The desired entry may be gone (or carry no components): ask the driver too.
        wids = {workload_id(instance_id, c.name) for c in comps}
        prefix = f"{instance_id}-"
        wids |= {w for w in await asyncio.to_thread(self.driver.list) if w.startswith(prefix)}
        try:
            for wid in sorted(wids):
                await asyncio.to_thread(self.driver.delete, wid)
        except DriverError as exc:
            if row is not None:
                self._move(row, ActualState.FAILED, reason=f"delete failed: {exc}")
            return
        if row is not None:
            self._move(row, ActualState.DELETED)

    # -- agent stop ------------------------------------------------------------------

    async def shutdown(self, keep_workloads: bool) -> None:
        """Before the agent exits: stop instances (unless kept), closing their usage."""
        async with self._lock:
            if keep_workloads:
                return
            rows = [r for r in actual.list_all(self.store) if r.state in _ACTIVE]
            wanted = desired.entries(self.store)

            async def stop_one(row: ActualRow) -> None:
                entry = wanted.get(row.id)
                comps = entry.instance.components if entry else []
                row = self._move(row, ActualState.STOPPING, reason="agent stopping")
                try:
                    await self._stop_workloads(row.id, comps)
                except DriverError as exc:
                    log.warning("stopping %s at agent exit failed: %s", row.id, exc)
                self._move(row, ActualState.STOPPED, reason="agent stopped")

            await asyncio.gather(*(stop_one(r) for r in rows))
