"""FakeDriver: the compute contract in memory, no processes, for tests and demos."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from cloudlet.compute.base import (
    ComputeDriver,
    RestartPolicy,
    WorkloadSpec,
    WorkloadState,
    WorkloadStatus,
    endpoint,
)
from cloudlet.errors import DriverError, WorkloadNotFoundError

#: Decides what a workload does each time it starts: None keeps it running, an int
#: makes it exit at once with that code.
Program = Callable[[WorkloadSpec], "int | None"]


@dataclass
class FakeWorkload:
    """One pretend workload; fields mirror WorkloadStatus."""

    spec: WorkloadSpec
    state: WorkloadState = WorkloadState.CREATED
    pid: int | None = None
    restarts: int = 0
    exit_code: int | None = None
    reason: str | None = None
    log: list[str] = field(default_factory=list)


class FakeMachine:
    """The pretend host: what outlives one FakeDriver.

    Hand the same machine to a new FakeDriver to act out an agent restart; workloads
    left running by ``close(keep_running=True)`` are still there, with the same pids.
    Pids are handed out in order from 1000, so runs are deterministic.
    """

    def __init__(self) -> None:
        self.workloads: dict[str, FakeWorkload] = {}
        self.lock = threading.RLock()
        self._next_pid = 1000

    def new_pid(self) -> int:
        with self.lock:
            self._next_pid += 1
            return self._next_pid


class FakeDriver(ComputeDriver):
    """Keeps workloads in a :class:`FakeMachine` and runs nothing.

    Everything happens synchronously inside the call, so tests need no waiting.
    Endpoints are ``host:port`` from the spec. ``program`` decides whether a started
    workload keeps running or exits with a code (default: it keeps running);
    :meth:`simulate_exit` makes a running one exit later. Either way the restart
    policy is applied at once, without backoff, as the process driver would over time.
    Suspend and resume only flip the state.

    Args:
        host: the address endpoints are reported on.
        program: what a workload does when it starts (see :data:`Program`).
        machine: the pretend host to share with other FakeDrivers; a fresh one if None.
    """

    name = "fake"
    capabilities = {"suspend": True, "survives_agent": True}

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        program: Program | None = None,
        machine: FakeMachine | None = None,
    ) -> None:
        self.host = host
        self.machine = machine if machine is not None else FakeMachine()
        self._program = program
        self._closed = False

    def create(self, spec: WorkloadSpec) -> None:
        """Record the workload. Raises DriverError for an empty id or command, or when
        the id exists with a different spec; nothing is recorded then."""
        self._check_open()
        if not spec.workload_id or not spec.command:
            raise DriverError(f"workload {spec.workload_id!r} needs an id and a command")
        with self.machine.lock:
            existing = self.machine.workloads.get(spec.workload_id)
            if existing is not None:
                if existing.spec == spec:
                    return
                raise DriverError(f"workload {spec.workload_id!r} exists with a different spec")
            self.machine.workloads[spec.workload_id] = FakeWorkload(spec)

    def start(self, workload_id: str) -> WorkloadStatus:
        self._check_open()
        with self.machine.lock:
            w = self._get(workload_id)
            if w.state is WorkloadState.SUSPENDED:
                raise DriverError(f"workload {workload_id!r} is suspended; resume it")
            if w.state is not WorkloadState.RUNNING:
                w.restarts = 0
                self._run(w, reason=None)
            return self._status(w)

    def stop(self, workload_id: str, timeout: float = 10.0) -> None:
        self._check_open()
        with self.machine.lock:
            w = self._get(workload_id)
            if w.state in (WorkloadState.RUNNING, WorkloadState.SUSPENDED):
                w.exit_code, w.reason = -15, "stopped"
                w.log.append("stopped")
            w.state, w.pid = WorkloadState.STOPPED, None

    def suspend(self, workload_id: str) -> None:
        """Mark a running workload suspended; suspending a suspended one succeeds.

        Raises:
            WorkloadNotFoundError: unknown workload.
            DriverError: it is not running.
        """
        self._check_open()
        with self.machine.lock:
            w = self._get(workload_id)
            if w.state is WorkloadState.SUSPENDED:
                return
            if w.state is not WorkloadState.RUNNING:
                raise DriverError(f"workload {workload_id!r} is {w.state.value}, not running")
            w.state = WorkloadState.SUSPENDED
            w.log.append("suspended")

    def resume(self, workload_id: str) -> WorkloadStatus:
        """Continue a suspended workload; resuming a running one succeeds.

        Raises:
            WorkloadNotFoundError: unknown workload.
            DriverError: it is neither suspended nor running.
        """
        self._check_open()
        with self.machine.lock:
            w = self._get(workload_id)
            if w.state is WorkloadState.SUSPENDED:
                w.state = WorkloadState.RUNNING
                w.log.append("resumed")
            elif w.state is not WorkloadState.RUNNING:
                raise DriverError(f"workload {workload_id!r} is {w.state.value}, not suspended")
            return self._status(w)

    def delete(self, workload_id: str) -> None:
        self._check_open()
        with self.machine.lock:
            self.machine.workloads.pop(workload_id, None)

    def status(self, workload_id: str) -> WorkloadStatus:
        with self.machine.lock:
            w = self.machine.workloads.get(workload_id)
            if w is None:
                return WorkloadStatus(workload_id, WorkloadState.ABSENT)
            return self._status(w)

    def list(self) -> list[str]:
        with self.machine.lock:
            return sorted(self.machine.workloads)

    def log(self, workload_id: str, tail_bytes: int = 64 * 1024) -> str:
        """The lifecycle lines of the workload ("started pid 1001", "exited with code 1"...).

        Raises:
            WorkloadNotFoundError: unknown workload.
        """
        with self.machine.lock:
            text = "".join(line + "\n" for line in self._get(workload_id).log)
        data = text.encode()
        return data[max(0, len(data) - max(0, tail_bytes)) :].decode(errors="replace")

    def close(self, keep_running: bool = False) -> None:
        if self._closed:
            return
        if not keep_running:
            with self.machine.lock:
                for workload_id, w in self.machine.workloads.items():
                    if w.state in (WorkloadState.RUNNING, WorkloadState.SUSPENDED):
                        self.stop(workload_id)
        self._closed = True

    def simulate_exit(self, workload_id: str, exit_code: int) -> WorkloadStatus:
        """Make a running workload exit on its own with ``exit_code``; the restart
        policy then restarts it (through ``program`` again) or gives up.

        Raises:
            WorkloadNotFoundError: unknown workload.
            DriverError: it is not running.
        """
        with self.machine.lock:
            w = self._get(workload_id)
            if w.state is not WorkloadState.RUNNING:
                raise DriverError(f"workload {workload_id!r} is {w.state.value}, not running")
            reason = self._exited(w, exit_code)
            if reason is not None:
                self._run(w, reason)
            return self._status(w)

    def _check_open(self) -> None:
        if self._closed:
            raise DriverError("the fake driver is closed")

    def _get(self, workload_id: str) -> FakeWorkload:
        w = self.machine.workloads.get(workload_id)
        if w is None:
            raise WorkloadNotFoundError(f"no workload {workload_id!r}")
        return w

    def _status(self, w: FakeWorkload) -> WorkloadStatus:
        where = None
        if w.spec.port is not None and w.state is WorkloadState.RUNNING:
            where = endpoint(self.host, w.spec.port)
        return WorkloadStatus(
            workload_id=w.spec.workload_id,
            state=w.state,
            endpoint=where,
            pid=w.pid,
            restarts=w.restarts,
            exit_code=w.exit_code,
            reason=w.reason,
        )

    def _run(self, w: FakeWorkload, reason: str | None) -> None:
        while True:
            w.state, w.pid = WorkloadState.RUNNING, self.machine.new_pid()
            w.exit_code, w.reason = None, reason
            w.log.append(f"started pid {w.pid}")
            code = self._program(w.spec) if self._program is not None else None
            if code is None:
                return
            reason = self._exited(w, code)
            if reason is None:
                return

    def _exited(self, w: FakeWorkload, code: int) -> str | None:
        """Apply the process driver's restart policy, minus the waiting.

        Returns:
            The reason to record on the restart, or None when it is not restarted.
        """
        spec = w.spec
        what = f"exited with code {code}"
        w.log.append(what)
        w.pid, w.exit_code = None, code
        wants = RestartPolicy(spec.restart).restarts_after(code)
        if wants and w.restarts < spec.max_restarts:
            w.restarts += 1
            return f"restart {w.restarts} of {spec.max_restarts} after exit code {code}"
        if wants:
            w.state, w.reason = WorkloadState.FAILED, f"{what}; gave up after {w.restarts} restarts"
        else:
            w.state = WorkloadState.STOPPED if code == 0 else WorkloadState.FAILED
            w.reason = what
        return None
