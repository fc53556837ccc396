"""The supervisor every driver of local process groups (process, qemu) shares: a thread
that notices leaders exiting on their own and applies restart policies with backoff.

Locking: the driver's ``_lock`` guards its table and every :class:`Workload` field
status() reads; a workload's ``op_lock`` is held for a whole start/stop/delete (and the
driver's own operations) and by the supervisor while it acts on that workload, so a
restart never races a stop. Methods named ``*_locked`` expect the caller to hold the
workloads' ``op_lock``.
"""

from __future__ import annotations

import abc
import logging
import threading
import time
from pathlib import Path
from typing import Generic, TypeVar

from cloudlet.compute._proc import Child, adopt
from cloudlet.compute._records import STATE_FILE, Runtime, write_json
from cloudlet.compute.base import RestartPolicy, WorkloadSpec, WorkloadState
from cloudlet.errors import DriverError

logger = logging.getLogger(__name__)

RUNNING, SUSPENDED, STOPPED = WorkloadState.RUNNING, WorkloadState.SUSPENDED, WorkloadState.STOPPED


class Workload:
    """The driver's view of one workload. Guarded as described in the module docstring."""

    def __init__(self, spec: WorkloadSpec, path: Path, rt: Runtime) -> None:
        self.spec = spec
        self.path = path
        self.rt = rt
        self.child: Child | None = None
        self.want_running = rt.state is RUNNING
        self.restart_at: float | None = None  # time.monotonic() of a pending restart
        self.deleted = False
        self.op_lock = threading.Lock()


W = TypeVar("W", bound=Workload)


class Supervisor(abc.ABC, Generic[W]):
    """Base holding a driver's workload table and the thread that watches it.

    The thread polls the leaders every ``poll_interval`` seconds and applies each
    workload's restart policy with exponential backoff (``restart_backoff`` doubling
    per restart, capped at ``max_backoff``). While a restart is pending the workload
    reports RUNNING with no pid; ``restarts`` counts restarts since the last start().
    """

    name: str
    #: What a workload's leader is called in messages.
    leader_name = "process"

    def __init__(self, poll_interval: float, restart_backoff: float, max_backoff: float) -> None:
        self._poll_interval = poll_interval
        self._backoff = restart_backoff
        self._max_backoff = max_backoff
        self._lock = threading.Lock()
        self._workloads: dict[str, W] = {}
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    @abc.abstractmethod
    def _run_locked(self, w: W, reason: str | None = None) -> None:
        """Start the workload's leader (for start(), or a restart saying ``reason``) and
        record it RUNNING. On failure record why and raise DriverError."""

    @abc.abstractmethod
    def _mark(self, w: W, message: str) -> None:
        """Append a driver line to the workload's log, so its fate shows among the output."""

    @abc.abstractmethod
    def _exit_reason(self, code: int | None) -> str:
        """How an exit with ``code`` (None: unknown) reads in ``reason``."""

    def _persist(self, w: W) -> None:
        """Write the runtime record; callers hold op_lock, so writes never interleave."""
        if w.deleted:
            return
        with self._lock:
            data = w.rt.to_json()
        try:
            write_json(w.path / STATE_FILE, data)
        except OSError as exc:
            raise DriverError(f"cannot record the state of {w.spec.workload_id!r}: {exc}") from exc

    def _adopt(self, w: W) -> Child | None:
        """A handle on the leader the record names, if it still runs."""
        if w.rt.pid is None or w.rt.create_time is None:
            return None
        return adopt(w.rt.pid, w.rt.create_time)

    def _rejoin_locked(self, w: W, child: Child | None) -> None:
        """Supervise a workload recorded RUNNING: its adopted leader ``child``, else a
        restart it was waiting for, else its leader's exit while no driver watched."""
        if child is not None:
            w.child = child
        elif w.rt.pid is None:
            w.restart_at = time.monotonic()  # it was waiting for a restart
        else:
            what = f"{self.leader_name} {w.rt.pid} was gone when the driver started"
            self._on_exit_locked(w, None, what)

    def _halt(self, workloads: list[W]) -> None:
        """Mark the workloads as wanted stopped: no restart is pending any more."""
        with self._lock:
            for w in workloads:
                w.want_running = False
                w.restart_at = None

    def _record_stopped_locked(self, w: W, code: int | None) -> None:
        """Record that ``w`` was stopped on request, its leader (if any) reaped with ``code``."""
        with self._lock:
            if w.child is not None:
                w.rt.exit_code = code
            if w.child is not None or w.rt.state in (RUNNING, SUSPENDED):
                w.rt.reason = "stopped"  # (not when it was stopped already)
            w.child = None
            w.rt.state = STOPPED
            w.rt.forget_process()
        self._persist(w)

    def _on_exit_locked(self, w: W, code: int | None, what: str) -> None:
        """Record that the leader is gone and apply the restart policy."""
        spec = w.spec
        with self._lock:
            w.child = None
            rt = w.rt
            rt.forget_process()
            rt.exit_code = code
            wants = RestartPolicy(spec.restart).restarts_after(code)
            if not w.want_running:
                rt.state, rt.reason = STOPPED, "stopped"
            elif wants and rt.restarts < spec.max_restarts:
                delay = min(self._backoff * 2 ** min(rt.restarts, 30), self._max_backoff)
                w.restart_at = time.monotonic() + delay
                rt.state = RUNNING
                attempt = f"restart {rt.restarts + 1} of {spec.max_restarts}"
                rt.reason = f"{what}; {attempt} in {delay:.3g}s"
            elif wants:
                w.want_running = False
                rt.state = WorkloadState.FAILED
                rt.reason = f"{what}; gave up after {rt.restarts} restarts"
            else:
                w.want_running = False
                rt.state = STOPPED if code == 0 else WorkloadState.FAILED
                rt.reason = what
            reason = rt.reason
        self._mark(w, reason)
        self._persist(w)

    def _start_supervisor(self) -> None:
        self._thread = threading.Thread(
            target=self._supervise, name=f"cloudlet-{self.name}-supervisor", daemon=True
        )
        self._thread.start()

    def _stop_supervisor(self) -> None:
        self._wake.set()
        if self._thread is not None:
            self._thread.join()

    def _supervise(self) -> None:
        while not self._wake.wait(self._poll_interval):
            try:
                self._tick()
            except Exception:
                logger.exception("%s supervisor check failed", self.name)

    def _tick(self) -> None:
        with self._lock:
            workloads = list(self._workloads.values())
        for w in workloads:
            # Busy means an operation owns the workload; look again next tick.
            if not w.op_lock.acquire(blocking=False):
                continue
            try:
                if w.deleted:
                    continue
                if w.child is not None and w.child.exited():
                    code = w.child.finish()
                    self._on_exit_locked(w, code, self._exit_reason(code))
                elif (
                    w.child is None
                    and w.restart_at is not None
                    and time.monotonic() >= w.restart_at
                ):
                    self._restart_locked(w)
            finally:
                w.op_lock.release()

    def _restart_locked(self, w: W) -> None:
        with self._lock:
            w.rt.restarts += 1
            reason = f"restart {w.rt.restarts} of {w.spec.max_restarts}"
            if w.rt.exit_code is not None:
                reason += f" after exit code {w.rt.exit_code}"
        try:
            self._run_locked(w, reason)
        except DriverError as exc:
            with self._lock:
                w.want_running = False
                w.restart_at = None
                w.rt.state = WorkloadState.FAILED
                w.rt.reason = str(exc)
            self._persist(w)
