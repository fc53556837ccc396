"""The reconciler: brings actual state to desired state through the compute driver.

It runs on every desired change and every ``reconcile_interval_s``; the periodic
pass is also how crashed workloads are noticed (``driver.status``). It reads only
the local store, so it works the same with the controller unreachable, and its
first pass after an agent start adopts workloads that kept running or restarts
those that did not. Each instance becomes one workload per component, named
``<instance-id>-<component>``, on the driver for its kind (see ``DriverSet``).

An instance with a vm component starts in a background task, since fetching,
synthesis and boot take a while: ``pending`` -> ``fetching`` -> ``synthesizing`` ->
``starting`` -> ``running`` once its service answers, each phase timed in the row
(``fetch``, ``synthesize``, ``boot_or_resume``, ``first_answer`` seconds). Passes
leave such an instance alone while its task runs, unless its desired entry changed.
An artifact that is neither cached nor reachable keeps the instance ``fetching``
(with the reason) and later passes try again; other errors fail it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import psutil

from cloudlet.agent import actual, desired
from cloudlet.agent._crash_loop import CrashWatch
from cloudlet.agent._instance_ops import ACTIVE, InstanceOps
from cloudlet.agent._specs import (
    VM_UNSUPPORTED,
    DriverSet,
    build_spec,
    spec_digest,
    workload_id,
)
from cloudlet.agent._wait import sleep_or
from cloudlet.agent.actual import ActualRow
from cloudlet.agent.checkpoints import Checkpointer
from cloudlet.agent.desired import DesiredEntry
from cloudlet.agent.handoff import HandoffRunner
from cloudlet.agent.metrics import AgentMetrics
from cloudlet.agent.store import ALIVE_AT, Store
from cloudlet.agent.vm import Opened, VmBuilder, wait_for_answer
from cloudlet.compute import ComputeDriver, WorkloadSpec, WorkloadState, WorkloadStatus
from cloudlet.compute.ports import free_port
from cloudlet.errors import (
    CloudletError,
    ConflictError,
    ControllerUnreachableError,
    DriverError,
    NotFoundError,
)
from cloudlet.schemas import ActualState, Component, ComponentKind, DesiredState

log = logging.getLogger(__name__)

#: How long a start waits inline for a process to bind its port, and how soon a
#: pass looks again at one still not listening: 0.25 s, doubling up to 5 s, so that
#: a workload that never listens does not drive a full pass four times a second.
LISTEN_WAIT_S = 1.0
LISTEN_RECHECK_S = 0.25
LISTEN_RECHECK_MAX_S = 5.0

__all__ = ["VM_UNSUPPORTED", "Reconciler", "build_spec", "free_port", "spec_digest", "workload_id"]


class Reconciler(InstanceOps):
    """Drives one site's instances toward their desired state, one pass at a time."""

    def __init__(
        self,
        store: Store,
        driver: ComputeDriver | DriverSet,
        *,
        workload_host: str = "127.0.0.1",
        on_change: Callable[[], None] | None = None,
        vm: VmBuilder | None = None,
        answer_timeout_s: float = 120.0,
        state_root: Path | None = None,
        metrics: AgentMetrics | None = None,
        crashes: CrashWatch | None = None,
    ) -> None:
        super().__init__(
            store,
            driver,
            workload_host=workload_host,
            on_change=on_change,
            vm=vm,
            state_root=state_root,
            metrics=metrics,
        )
        self.answer_timeout_s = answer_timeout_s
        #: Restart counts and the instance.crash-loop alarm.
        self.crashes = crashes or CrashWatch(store)
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        #: Instance id -> passes in a row that found its port not listening yet.
        self._listen_checks: dict[str, int] = {}
        #: VM instances starting in the background: instance id -> (revision, task).
        self._starting: dict[str, tuple[int, asyncio.Task[None]]] = {}
        alive = store.get_meta(ALIVE_AT)
        # When the previous agent was last seen alive: a workload found dead at the
        # first pass died no later than that, so its usage ends there.
        self._boot_alive_at: float | None = float(alive) if alive else None
        self.passes = 0
        #: The desired revision the last complete pass acted on (what reports claim).
        self.applied_revision = 0
        #: Carries out handoff orders (set by the agent once it can reach the controller).
        self.handoffs: HandoffRunner | None = None
        #: Starts failed-over instances from their checkpoints (set with a controller).
        self.checkpoints: Checkpointer | None = None

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
                want = wanted.get(instance_id)
                if await self._still_starting(instance_id, want):
                    continue
                try:
                    await self._reconcile(want, actual.get(self.store, instance_id))
                except Exception:
                    log.exception("reconciling instance %s failed", instance_id)
            self.store.set_meta(ALIVE_AT, time.time())
            self.passes += 1
            self.applied_revision = cursor

    async def _still_starting(self, instance_id: str, want: DesiredEntry | None) -> bool:
        """True while a start task runs for the same desired entry; else end the task."""
        entry = self._starting.get(instance_id)
        if entry is None:
            return False
        revision, task = entry
        if not task.done():
            if (
                want is not None
                and want.state is DesiredState.RUNNING
                and (want.revision == revision)
            ):
                return True
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        self._starting.pop(instance_id, None)
        return False

    async def _reconcile(self, want: DesiredEntry | None, row: ActualRow | None) -> None:
        if want is None:
            if row is not None and row.state is not ActualState.DELETED:
                # Nothing asks for it any more (its desired entry is gone): remove it.
                await self._ensure_deleted(row.id, [], row)
                self._forget_watches(row.id, "instance deleted")
            return
        if row is not None and row.state is not ActualState.DELETED and row.epoch < want.epoch:
            # Fencing: this copy belongs to an earlier epoch; the instance moved away
            # since (and maybe back). It must not serve again: remove it first.
            log.info("instance %s: stale copy (epoch %d < %d)", row.id, row.epoch, want.epoch)
            await self._ensure_deleted(row.id, want.instance.components, row)
            row = actual.get(self.store, want.id)
        if want.state is DesiredState.RUNNING:
            if self.handoffs is not None and want.instance.handoff is not None:
                if not await self.handoffs.prepare(self, want, row):
                    return
                row = actual.get(self.store, want.id)
            if self.checkpoints is not None and want.instance.restore is not None:
                if not await self.checkpoints.restore_process(self, want):
                    return
                row = actual.get(self.store, want.id)
            await self._ensure_running(want, row)
        elif want.state is DesiredState.STOPPED:
            await self._ensure_stopped(want, row)
            self._forget_watches(want.id, "instance stopped")
        elif want.state is DesiredState.SUSPENDED:
            await self._ensure_suspended(want, row)
            self._forget_watches(want.id, "instance suspended")
        else:
            await self._ensure_deleted(want.id, want.instance.components, row)
            self._forget_watches(want.id, "instance deleted")
            if row is None:
                desired.forget(self.store, [want.id])

    async def _ensure_running(self, want: DesiredEntry, row: ActualRow | None) -> None:
        inst = want.instance
        if row is None or row.state is ActualState.DELETED:
            if row is not None:
                actual.forget(self.store, [row.id])
            row = self._track(inst, want.origin, ActualState.PENDING)
        if row.state is ActualState.FAILED and row.applied_revision >= want.revision:
            return  # stays failed until the desired entry changes
        if inst.restarts != row.restarts:
            row = await self._restart_for(want, row)
        has_vm = any(c.kind is ComponentKind.VM for c in inst.components)
        if has_vm:
            try:
                await asyncio.to_thread(self.drivers.for_kind, ComponentKind.VM)
                if self.vm is None:
                    raise DriverError(VM_UNSUPPORTED)
            except DriverError as exc:
                self._move(row, ActualState.FAILED, reason=str(exc), applied_revision=want.revision)
                return
        row = self._assign_ports(inst, row)
        specs = self._specs(inst, row)
        digest = spec_digest(specs.values())
        if row.spec_digest is None:  # first start, or a store from before digests
            row = actual.set_spec_digest(self.store, row, digest)
        # Only a newer desired entry replaces workloads (an agent upgrade that builds
        # specs differently must not restart everything).
        redefined = row.spec_digest != digest and row.applied_revision < want.revision
        comps = inst.components
        st = {c.name: await self._status(c, inst.id) for c in comps}
        row, looping = self.crashes.observe(row, st.values())
        if not redefined and all(s.state is WorkloadState.RUNNING for s in st.values()):
            if looping:
                # Up between two crashes is not serving: it reads starting, with why.
                why = f"crash loop: restarted {row.crash_restarts} times"
                self._move(row, ActualState.STARTING, reason=why)
                return
            if row.state is ActualState.RUNNING and self._restarted_while_down(st.values()):
                # The driver restarted workloads that died with the site: the time the
                # site was down is not usage, and the restart is a lifecycle event.
                row = self._move(
                    row,
                    ActualState.STARTING,
                    reason="the site restarted; its workloads were restarted",
                    usage_end=self._boot_alive_at,
                )
            if row.state is not ActualState.RUNNING:
                if not await self._serving(row, comps, st):
                    return
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
        if has_vm:
            task = asyncio.create_task(self._start_guarded(want, row, st, specs, digest))
            task.add_done_callback(lambda _: self.wake())
            self._starting[inst.id] = (want.revision, task)
            return
        await self._start(want, row, st, specs, digest)

    def _forget_watches(self, instance_id: str, reason: str) -> None:
        """The instance stopped or went away: its crash loop and listen rechecks end."""
        self.crashes.forget(instance_id, reason)
        self._listen_checks.pop(instance_id, None)

    async def _serving(
        self,
        row: ActualRow,
        comps: list[Component],
        st: dict[str, WorkloadStatus],
        wait: float = 0.0,
    ) -> bool:
        """Whether every workload that binds its own port accepts connections, waiting
        up to ``wait`` seconds. If not, the instance stays ``starting`` and a pass comes
        back soon: ``running`` means serving."""
        deadline = time.monotonic() + wait
        while (where := await self._not_listening(comps, st)) is not None:
            if time.monotonic() >= deadline:
                if row.state is not ActualState.STARTING:
                    row = self._move(row, ActualState.STARTING, reason=None)
                log.debug("instance %s: nothing listens on %s yet", row.id, where)
                checks = self._listen_checks.get(row.id, 0)
                self._listen_checks[row.id] = checks + 1
                delay = min(LISTEN_RECHECK_S * 2**checks, LISTEN_RECHECK_MAX_S)
                asyncio.get_running_loop().call_later(delay, self.wake)
                return False
            await asyncio.sleep(0.05)
        self._listen_checks.pop(row.id, None)
        return True

    def _restarted_while_down(self, statuses: Iterable[WorkloadStatus]) -> bool:
        """On the first pass: did a workload start after the previous agent was last
        alive (its driver restarted it), rather than survive the agent's absence?"""
        if self.passes != 0 or self._boot_alive_at is None:
            return False
        for status in statuses:
            if status.pid is None:
                return True  # a restart is pending
            try:
                if psutil.Process(status.pid).create_time() > self._boot_alive_at:
                    return True
            except psutil.Error:
                continue  # not a local process (or gone): nothing to tell
        return False

    async def _start_guarded(
        self,
        want: DesiredEntry,
        row: ActualRow,
        st: dict[str, WorkloadStatus],
        specs: dict[str, WorkloadSpec],
        digest: str,
    ) -> None:
        try:
            await self._start(want, row, st, specs, digest)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("starting instance %s failed", want.id)
            current = actual.get(self.store, want.id)
            if current is not None:
                self._move(current, ActualState.FAILED, reason=f"start failed: {exc}")

    async def _prepare_vms(
        self, want: DesiredEntry, row: ActualRow, st: dict[str, WorkloadStatus]
    ) -> tuple[ActualRow, dict[str, float]]:
        """Fetch and synthesize the disks of vm components that have no workload yet."""
        assert self.vm is not None
        todo = [
            c
            for c in want.instance.components
            if c.kind is ComponentKind.VM and st[c.name].state is WorkloadState.ABSENT
        ]
        timings: dict[str, float] = {}
        if not todo:
            return row, timings
        if row.state is not ActualState.FETCHING:  # (a retry while waiting stays quiet)
            row = self._move(row, ActualState.FETCHING, reason=None)
        t0 = time.monotonic()
        opened: dict[str, Opened] = {}
        try:
            for comp in todo:
                if self.vm.disk_path(want.id, comp).is_file():
                    continue
                if self.checkpoints is not None and await self.checkpoints.restore_vm(want, comp):
                    continue  # a failover: disk, RAM and device state from its checkpoint
                inst = want.instance
                opened[comp.name] = await self.vm.fetch(comp, inst.signing, inst.project)
            self._timed(timings, "fetch", t0)
            row = self._move(row, ActualState.SYNTHESIZING, timings=timings)
            t0 = time.monotonic()
            for comp in todo:
                if comp.name in opened:
                    memory_mib = want.instance.resources.memory_mib
                    await self.vm.synthesize(want.id, comp, opened.pop(comp.name), memory_mib)
            self._timed(timings, "synthesize", t0)
        finally:
            for left in opened.values():  # not synthesized: a later one failed
                self.vm.discard(left)
        return row, timings

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
        timings: dict[str, float] = {}
        replace = row.spec_digest != digest
        if replace:
            reason = "definition changed; restarting"
        elif row.state is ActualState.RUNNING:
            reason = "workload was not running; restarting"
            if self.passes == 0:
                usage_end = self._boot_alive_at
        try:
            if replace:
                for comp in inst.components:
                    wid = workload_id(inst.id, comp.name)
                    await self._call(self._drv(comp).delete, wid)
                st = {n: WorkloadStatus(s.workload_id, WorkloadState.ABSENT) for n, s in st.items()}
                row = actual.set_spec_digest(self.store, row, digest)
                # A crash loop was the old definition's: the new one starts afresh.
                self._forget_watches(inst.id, "its definition changed")
            if self.vm is not None and any(c.kind is ComponentKind.VM for c in inst.components):
                if replace:
                    self.vm.remove_instance(inst.id)
                row, timings = await self._prepare_vms(want, row, st)
            if row.state is not ActualState.STARTING:
                row = self._move(
                    row, ActualState.STARTING, reason=reason, usage_end=usage_end, timings=timings
                )
            t0 = time.monotonic()
            for comp in inst.components:
                wid = workload_id(inst.id, comp.name)
                driver = self._drv(comp)
                state = st[comp.name].state
                if (
                    comp.kind is ComponentKind.VM
                    and self.vm is not None
                    and (state is not WorkloadState.ABSENT)
                ):
                    # Its workload holds its own link to the RAM image (and resumes it
                    # once): ours must never reach a later workload, whose disk will have
                    # moved on. (Normally dropped just after create; this catches a crash.)
                    self.vm.drop_resume_image(inst.id, comp)
                if state is WorkloadState.RUNNING:
                    continue
                if state is WorkloadState.FAILED:
                    await self._call(driver.delete, wid)
                    state = WorkloadState.ABSENT
                if state is WorkloadState.ABSENT:
                    spec = specs[comp.name]
                    if comp.kind is ComponentKind.VM and self.vm is not None:
                        image = self.vm.resume_image(inst.id, comp)
                        spec = dataclasses.replace(spec, memory_image=image)
                    await self._call(driver.create, spec)
                    if spec.memory_image is not None and self.vm is not None:
                        self.vm.drop_resume_image(inst.id, comp)
                if state is WorkloadState.SUSPENDED and driver.capabilities.get("suspend"):
                    st[comp.name] = await self._call(driver.resume, wid)
                else:
                    st[comp.name] = await self._call(driver.start, wid)
            if any(c.kind is ComponentKind.VM for c in inst.components):
                self._timed(timings, "boot_or_resume", t0)
                answer = await self._first_answer(inst.id, inst.components, st)
                if answer is not None:
                    self._timed(timings, "first_answer", t0)
        except ControllerUnreachableError as exc:
            # Artifacts missing while the link is down: wait in `fetching` (downloads
            # resume) and let a later pass try again, rather than fail for good.
            log.info("instance %s waits for the controller: %s", inst.id, exc)
            row = actual.get(self.store, inst.id) or row
            self._move(row, ActualState.FETCHING, reason=f"waiting for the controller: {exc}")
            return
        except (CloudletError, OSError) as exc:
            log.warning("instance %s failed to start: %s", inst.id, exc)
            row = actual.get(self.store, inst.id) or row
            self._move(row, ActualState.FAILED, reason=str(exc), applied_revision=want.revision)
            return
        if all(s.state is WorkloadState.RUNNING for s in st.values()):
            if not await self._serving(row, inst.components, st, wait=LISTEN_WAIT_S):
                return
            self._move(
                row,
                ActualState.RUNNING,
                endpoint=self._endpoint(row, inst.components, st),
                applied_revision=want.revision,
                timings=timings,
            )
        elif failed := [s for s in st.values() if s.state is WorkloadState.FAILED]:
            reason = failed[0].reason or f"workload {failed[0].workload_id} failed"
            self._move(row, ActualState.FAILED, reason=reason, applied_revision=want.revision)

    async def _first_answer(
        self, instance_id: str, comps: list[Component], st: dict[str, WorkloadStatus]
    ) -> float | None:
        """Wait until every vm component's service answers; seconds, or raise on timeout."""
        waited = None
        for comp in comps:
            endpoint = st[comp.name].endpoint
            if comp.kind is not ComponentKind.VM or endpoint is None:
                continue

            async def alive(comp: Component = comp) -> bool:
                s = await self._status(comp, instance_id)
                st[comp.name] = s
                return s.state is WorkloadState.RUNNING

            waited = await wait_for_answer(endpoint, self.answer_timeout_s, alive)
            if waited is None:
                if st[comp.name].state is not WorkloadState.RUNNING:
                    return None  # the caller reports the failed workload
                await self._stop_workloads(instance_id, comps)
                raise DriverError(
                    f"the service of {comp.name} did not answer on {endpoint} "
                    f"within {self.answer_timeout_s:g}s"
                )
        return waited

    async def restart(self, instance_id: str, reason: str = "restart asked at the site") -> None:
        """Stop an instance's workloads now; the pass this wakes starts them again.

        Raises:
            NotFoundError: the site runs no such instance.
            ConflictError: it is not meant to run (stopped, suspended or deleted).
        """
        async with self._lock:
            want = desired.entries(self.store).get(instance_id)
            row = actual.get(self.store, instance_id)
            if want is None or row is None or row.state is ActualState.DELETED:
                raise NotFoundError(f"no instance {instance_id!r} at this site")
            if want.state is not DesiredState.RUNNING:
                raise ConflictError(f"instance {instance_id!r} is {want.state}: start it instead")
            await self._still_starting(instance_id, None)  # ends a start under way
            row = self._move(row, ActualState.STOPPING, reason=reason)
            await self._stop_workloads(instance_id, want.instance.components)
        self.wake()

    # -- agent stop ------------------------------------------------------------------

    async def shutdown(self, keep_workloads: bool) -> None:
        """Before the agent exits: end start tasks, stop instances (unless kept)."""
        for _, task in self._starting.values():
            task.cancel()
        for _, task in self._starting.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._starting.clear()
        async with self._lock:
            if keep_workloads:
                return
            rows = [r for r in actual.list_all(self.store) if r.state in ACTIVE]
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
