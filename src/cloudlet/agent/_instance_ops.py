"""Instance operations the reconciler builds on: state moves, ports, specs, stop and delete.

Split from :mod:`cloudlet.agent.reconciler` to keep each module small; only the
reconciler uses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import ParamSpec, TypeVar

from cloudlet.agent import actual
from cloudlet.agent._specs import DriverSet, build_spec, workload_id
from cloudlet.agent.actual import ActualRow
from cloudlet.agent.desired import DesiredEntry
from cloudlet.agent.metrics import AgentMetrics
from cloudlet.agent.store import Store
from cloudlet.agent.vm import VmBuilder
from cloudlet.compute import ComputeDriver, WorkloadSpec, WorkloadState, WorkloadStatus
from cloudlet.compute.base import split_endpoint
from cloudlet.compute.ports import free_port
from cloudlet.errors import DriverError, WorkloadNotFoundError
from cloudlet.schemas import (
    ActualState,
    Component,
    ComponentKind,
    DesiredInstance,
    InstanceOrigin,
)

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

ACTIVE = {
    ActualState.PENDING,
    ActualState.FETCHING,
    ActualState.SYNTHESIZING,
    ActualState.STARTING,
    ActualState.RUNNING,
}


async def accepts(endpoint: str, timeout: float = 0.5) -> bool:
    """Whether ``host:port`` (``[v6]:port``) accepts a TCP connection now."""
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(*split_endpoint(endpoint)), timeout
        )
    except (OSError, TimeoutError, ValueError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


class InstanceOps:
    """Shared state and per-instance steps of the :class:`~cloudlet.agent.reconciler.Reconciler`."""

    def __init__(
        self,
        store: Store,
        driver: ComputeDriver | DriverSet,
        *,
        workload_host: str = "127.0.0.1",
        on_change: Callable[[], None] | None = None,
        vm: VmBuilder | None = None,
        state_root: Path | None = None,
        metrics: AgentMetrics | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics or AgentMetrics()
        #: Stateful components' state directories, one per instance (what handoffs move).
        self.state_root = state_root
        self.drivers = driver if isinstance(driver, DriverSet) else DriverSet(driver)
        self.workload_host = workload_host
        self.on_change = on_change
        self.vm = vm

    # -- helpers ---------------------------------------------------------------------

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def _drv(self, comp: Component) -> ComputeDriver:
        return self.drivers.for_kind(comp.kind)

    async def _call(self, method: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a driver method in a worker thread, counting its failures by operation.

        A missing workload is an answer, not a failure: not counted.
        """
        try:
            return await asyncio.to_thread(method, *args, **kwargs)
        except WorkloadNotFoundError:
            raise
        except DriverError:
            self.metrics.driver_error(method.__name__)
            raise

    def _timed(self, timings: dict[str, float], phase: str, t0: float) -> None:
        """Record that ``phase`` of a VM start took from ``t0`` (monotonic) until now."""
        seconds = time.monotonic() - t0
        timings[phase] = round(seconds, 3)
        self.metrics.phase(phase, seconds)

    def _move(
        self,
        row: ActualRow,
        state: ActualState,
        *,
        reason: str | None = None,
        endpoint: str | None = None,
        applied_revision: int | None = None,
        usage_end: float | None = None,
        timings: dict[str, float] | None = None,
    ) -> ActualRow:
        if (state, reason, endpoint) == (row.state, row.reason, row.endpoint) and not timings:
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
            timings=timings,
        )
        self._changed()
        return new

    async def _status(self, comp: Component, instance_id: str) -> WorkloadStatus:
        wid = workload_id(instance_id, comp.name)
        try:
            driver = self._drv(comp)
        except DriverError:
            return WorkloadStatus(wid, WorkloadState.ABSENT)
        return await self._call(driver.status, wid)

    def _endpoint(
        self, row: ActualRow, comps: list[Component], st: dict[str, WorkloadStatus]
    ) -> str | None:
        for comp in comps:
            if comp.name in row.ports:
                return st[comp.name].endpoint or f"{self.workload_host}:{row.ports[comp.name]}"
        return None

    async def _not_listening(
        self, comps: list[Component], st: dict[str, WorkloadStatus]
    ) -> str | None:
        """The first endpoint of a component whose workload binds its own port
        (driver capability ``listens``) that does not accept a connection yet."""
        for comp in comps:
            where = st[comp.name].endpoint
            if where is None or not self._drv(comp).capabilities.get("listens"):
                continue
            if not await accepts(where):
                return where
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
            epoch=inst.epoch,
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

    def _specs(self, inst: DesiredInstance, row: ActualRow) -> dict[str, WorkloadSpec]:
        specs = {}
        for c in inst.components:
            disk = None
            if c.kind is ComponentKind.VM and self.vm is not None:
                disk = self.vm.disk_path(inst.id, c)
            specs[c.name] = build_spec(inst, c, row.ports.get(c.name), disk, self.state_root)
        return specs

    # -- desired: stopped / deleted --------------------------------------------------

    async def _stop_workloads(self, instance_id: str, comps: list[Component]) -> None:
        for comp in comps:
            with contextlib.suppress(WorkloadNotFoundError):
                wid = workload_id(instance_id, comp.name)
                try:
                    driver = self._drv(comp)
                except DriverError:
                    continue  # no driver for its kind: nothing of it can run
                await self._call(driver.stop, wid)

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
                s = await self._status(comp, inst.id)
                if s.state is WorkloadState.RUNNING:
                    await self._stop_workloads(inst.id, inst.components)
                    break
            actual.set_applied(self.store, row, want.revision)
            return
        if row.state in ACTIVE:
            row = self._move(row, ActualState.STOPPING)
        try:
            await self._stop_workloads(inst.id, inst.components)
        except DriverError as exc:
            self._move(row, ActualState.FAILED, reason=f"stop failed: {exc}")
            return
        self._move(row, ActualState.STOPPED, applied_revision=want.revision)

    async def _restart_for(self, want: DesiredEntry, row: ActualRow) -> ActualRow:
        """Apply a restart the controller asked for (a new ``restarts`` generation):
        stop what runs, so the caller starts it afresh; remembered, so it happens once."""
        if row.state in (ACTIVE - {ActualState.PENDING}) or row.state is ActualState.SUSPENDED:
            row = self._move(row, ActualState.STOPPING, reason="restart requested")
            try:
                await self._stop_workloads(row.id, want.instance.components)
            except DriverError as exc:
                log.warning("stopping %s for a restart failed: %s", row.id, exc)
        return actual.set_restarts(self.store, row, want.instance.restarts)

    async def _ensure_suspended(self, want: DesiredEntry, row: ActualRow | None) -> None:
        """Suspend every VM workload (its RAM and device state stay at the site).

        An instance with a process component cannot be suspended (the controller and
        the local API refuse to ask): it fails with the reason rather than lose state.
        """
        inst = want.instance
        if row is None or row.state is ActualState.DELETED:
            if row is not None:
                actual.forget(self.store, [row.id])
            self._track(inst, want.origin, ActualState.STOPPED)  # nothing ran: nothing to keep
            return
        if row.state in (ActualState.SUSPENDED, ActualState.STOPPED):
            actual.set_applied(self.store, row, want.revision)
            return
        if row.state is ActualState.FAILED and row.applied_revision >= want.revision:
            return
        procs = [c.name for c in inst.components if c.kind is not ComponentKind.VM]
        if procs:
            reason = f"cannot suspend process component(s) {', '.join(procs)}; stop instead"
            self._move(row, ActualState.FAILED, reason=reason, applied_revision=want.revision)
            return
        row = self._move(row, ActualState.SUSPENDING)
        try:
            for comp in inst.components:
                driver = self._drv(comp)
                wid = workload_id(inst.id, comp.name)
                s = await self._call(driver.status, wid)
                if s.state is WorkloadState.RUNNING:
                    await self._call(driver.suspend, wid)
        except DriverError as exc:
            self._move(
                row,
                ActualState.FAILED,
                reason=f"suspend failed: {exc}",
                applied_revision=want.revision,
            )
            return
        self._move(row, ActualState.SUSPENDED, applied_revision=want.revision)

    async def _ensure_deleted(
        self, instance_id: str, comps: list[Component], row: ActualRow | None
    ) -> None:
        if row is not None and row.state is ActualState.DELETED:
            return  # forgotten once the controller acknowledges the report
        if row is not None and row.state in ACTIVE:
            row = self._move(row, ActualState.STOPPING)
        # The desired entry may be gone (or carry no components): ask the drivers too.
        prefix = workload_id(instance_id, "")
        for comp in comps:
            with contextlib.suppress(DriverError):
                self._drv(comp)  # build the VM driver if its VMs may exist
        try:
            for driver in self.drivers.built():
                wids = {workload_id(instance_id, c.name) for c in comps if self._owns(driver, c)}
                wids |= {w for w in await self._call(driver.list) if w.startswith(prefix)}
                for wid in sorted(wids):
                    await self._call(driver.delete, wid)
        except DriverError as exc:
            if row is not None:
                self._move(row, ActualState.FAILED, reason=f"delete failed: {exc}")
            return
        if self.vm is not None:
            await asyncio.to_thread(self.vm.remove_instance, instance_id)
        if self.state_root is not None:
            await asyncio.to_thread(shutil.rmtree, self.state_root / instance_id, True)
        if row is not None:
            self._move(row, ActualState.DELETED)

    def _owns(self, driver: ComputeDriver, comp: Component) -> bool:
        try:
            return self._drv(comp) is driver
        except DriverError:
            return False
