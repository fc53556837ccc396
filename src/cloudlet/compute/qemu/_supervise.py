"""The qemu driver's table of VMs: read back from disk (adopting running QEMUs), and
watched by a supervisor thread that applies restart policies.

Locking: the driver's ``_lock`` guards the table and every :class:`Vm` field status()
reads; a VM's ``op_lock`` is held for a whole start/stop/suspend/resume/delete and by
the supervisor while it acts on that VM, so a restart never races a stop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import time
import uuid
from pathlib import Path

from cloudlet.compute._proc import Child, adopt
from cloudlet.compute._records import (
    SPEC_FILE,
    STATE_FILE,
    read_json,
    spec_from_json,
    valid_id,
    write_json,
)
from cloudlet.compute.base import RestartPolicy, WorkloadSpec, WorkloadState
from cloudlet.compute.qemu import _vm
from cloudlet.compute.qemu._config import VMSTATE_FILE, VmOptions, options_of
from cloudlet.compute.qemu._store import VmRuntime
from cloudlet.errors import DriverError, WorkloadNotFoundError

logger = logging.getLogger(__name__)


class Vm:
    """The driver's view of one workload."""

    def __init__(self, spec: WorkloadSpec, options: VmOptions, path: Path, rt: VmRuntime) -> None:
        self.spec = spec
        self.options = options
        self.path = path
        self.rt = rt
        self.child: Child | None = None
        self.want_running = rt.state is WorkloadState.RUNNING
        self.restart_at: float | None = None  # time.monotonic() of a pending restart
        self.deleted = False
        self.op_lock = threading.Lock()


class Supervisor:
    """Mixin holding the VM table and the thread that notices QEMUs exiting on their own."""

    def __init__(self, poll_interval: float, restart_backoff: float, max_backoff: float) -> None:
        self._poll_interval = poll_interval
        self._backoff = restart_backoff
        self._max_backoff = max_backoff
        self._lock = threading.Lock()
        self._workloads: dict[str, Vm] = {}
        self._closed = False
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def _restart_locked(self, w: Vm, reason: str) -> None:
        raise NotImplementedError

    def _start_supervisor(self, name: str) -> None:
        self._thread = threading.Thread(target=self._supervise, name=name, daemon=True)
        self._thread.start()

    def _stop_supervisor(self) -> list[Vm] | None:
        """Mark the driver closed and end the thread; the VMs then, or None if closed already."""
        with self._lock:
            if self._closed:
                return None
            self._closed = True
            workloads = sorted(self._workloads.values(), key=lambda w: w.spec.workload_id)
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        return workloads

    def _check_open(self) -> None:
        if self._closed:
            raise DriverError("the qemu driver is closed")

    def _get(self, workload_id: str) -> Vm:
        self._check_open()
        with self._lock:
            w = self._workloads.get(workload_id)
        if w is None:
            raise WorkloadNotFoundError(f"no workload {workload_id!r}")
        return w

    def _check_alive(self, w: Vm) -> None:
        """Under op_lock: the driver is still open and the workload not deleted meanwhile."""
        self._check_open()
        if w.deleted:
            raise WorkloadNotFoundError(f"no workload {w.spec.workload_id!r}")

    def _persist(self, w: Vm) -> None:
        """Write the runtime record; callers hold op_lock, so writes never interleave."""
        if w.deleted:
            return
        with self._lock:
            data = w.rt.to_json()
        try:
            write_json(w.path / STATE_FILE, data)
        except OSError as exc:
            raise DriverError(f"cannot record the state of {w.spec.workload_id!r}: {exc}") from exc

    def _on_exit_locked(self, w: Vm, code: int | None, what: str) -> None:
        """Record that QEMU is gone and apply the restart policy."""
        spec = w.spec
        with self._lock:
            w.child = None
            rt = w.rt
            rt.pid, rt.create_time, rt.qmp, rt.exit_code = None, None, None, code
            policy = RestartPolicy(spec.restart)
            wants = policy is RestartPolicy.ALWAYS or (
                policy is RestartPolicy.ON_FAILURE and code != 0
            )
            if not w.want_running:
                rt.state, rt.reason = WorkloadState.STOPPED, "stopped"
            elif wants and rt.restarts < spec.max_restarts:
                delay = min(self._backoff * 2 ** min(rt.restarts, 30), self._max_backoff)
                w.restart_at = time.monotonic() + delay
                rt.state = WorkloadState.RUNNING
                attempt = f"restart {rt.restarts + 1} of {spec.max_restarts}"
                rt.reason = f"{what}; {attempt} in {delay:.3g}s"
            elif wants:
                w.want_running = False
                rt.state = WorkloadState.FAILED
                rt.reason = f"{what}; gave up after {rt.restarts} restarts"
            else:
                w.want_running = False
                rt.state = WorkloadState.STOPPED if code == 0 else WorkloadState.FAILED
                rt.reason = what
            reason = rt.reason
        _vm.mark(w.path, reason)
        self._persist(w)

    def _stop_locked(self, workloads: list[Vm], timeout: float) -> None:
        """Power the VMs off together: the ACPI button, ``timeout`` seconds, quit, kill.
        Each is recorded STOPPED; a suspended one loses its saved state."""
        with self._lock:
            for w in workloads:
                w.want_running, w.restart_at = False, None
        live = {w.child: w for w in workloads if w.child is not None and w.rt.qmp}
        for child, w in live.items():
            if not child.exited():
                _vm.command(Path(w.rt.qmp or ""), "system_powerdown", timeout=2.0)
        pending = _vm.wait_exit(live, timeout)
        for child in pending:
            _vm.command(Path(live[child].rt.qmp or ""), "quit", timeout=2.0)
        pending = _vm.wait_exit(pending, 5.0)
        stuck = set(_vm.terminate(pending)) if pending else set()
        for w in workloads:
            if w.child in stuck:
                continue
            code = w.child.finish() if w.child is not None else None
            if w.rt.state is WorkloadState.SUSPENDED:
                with contextlib.suppress(FileNotFoundError):
                    (w.path / VMSTATE_FILE).unlink()
            with self._lock:
                if w.child is not None:
                    w.rt.exit_code = code
                if w.rt.state in (WorkloadState.RUNNING, WorkloadState.SUSPENDED):
                    w.rt.reason = "stopped"
                w.child = None
                w.rt.state, w.rt.pid, w.rt.create_time, w.rt.qmp = (
                    WorkloadState.STOPPED,
                    None,
                    None,
                    None,
                )
            self._persist(w)
        if stuck:
            ids = ", ".join(live[c].spec.workload_id for c in stuck)
            raise DriverError(f"QEMU of {ids} survived SIGKILL")

    def _move_aside(self, state_dir: Path, workload_id: str) -> Path | None:
        """Rename the workload's directory to a trash name for removal; None if absent.

        The id is gone at once even if the removal is cut short; _load sweeps leftovers.
        """
        trash = state_dir / f".delete-{workload_id}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(state_dir / workload_id, trash)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise DriverError(f"cannot delete workload {workload_id!r}: {exc}") from exc
        return trash

    def _load(self, state_dir: Path) -> None:
        """Read every workload recorded under ``state_dir``; adopt the QEMUs still running."""
        for entry in sorted(state_dir.iterdir()):
            if entry.name.startswith((".create-", ".delete-")) and entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
                continue
            if not entry.is_dir() or not valid_id(entry.name):
                continue
            try:
                spec = spec_from_json(read_json(entry / SPEC_FILE))
                rt = VmRuntime.from_json(read_json(entry / STATE_FILE))
                if spec.workload_id != entry.name:
                    raise DriverError(f"spec names {spec.workload_id!r}")
            except (DriverError, KeyError, TypeError, ValueError) as exc:
                logger.warning("ignoring unreadable workload directory %s: %s", entry, exc)
                continue
            w = Vm(spec, options_of(spec), entry, rt)
            self._workloads[spec.workload_id] = w
            with w.op_lock:
                self._recover_locked(w)

    def _recover_locked(self, w: Vm) -> None:
        """Bring a record read back from disk in line with what is left of its QEMU,
        finishing or undoing a suspend or resume an earlier driver was cut short in."""
        rt, vmstate = w.rt, w.path / VMSTATE_FILE
        saved = vmstate.is_file()
        if rt.state is WorkloadState.SUSPENDED and not saved:
            rt.state, rt.reason = WorkloadState.STOPPED, "the saved state is missing"
        if rt.state is not WorkloadState.RUNNING:
            return
        child = adopt(rt.pid, rt.create_time) if rt.pid and rt.create_time else None
        if saved:
            # resume() deletes the saved state before the guest runs again, and suspend()
            # renames it into place only once QEMU is gone: so it is still valid.
            if child is not None:
                _vm.terminate([child])
            rt.state, rt.pid, rt.create_time, rt.qmp = WorkloadState.SUSPENDED, None, None, None
            rt.reason = "suspended (an interrupted suspend or resume was settled)"
            w.want_running = False
            self._persist(w)
            return
        with contextlib.suppress(FileNotFoundError):
            (w.path / (VMSTATE_FILE + ".tmp")).unlink()  # a suspend cut short
        if child is not None:
            w.child = child
            # A guest left paused by a suspend or resume cut short runs on.
            if rt.qmp and _vm.run_state(Path(rt.qmp)) in ("paused", "postmigrate"):
                _vm.command(Path(rt.qmp), "cont")
        elif rt.pid is None:
            w.restart_at = time.monotonic()  # it was waiting for a restart
        else:
            self._on_exit_locked(w, None, f"QEMU {rt.pid} was gone when the driver started")

    def _supervise(self) -> None:
        while not self._wake.wait(self._poll_interval):
            try:
                self._tick()
            except Exception:
                logger.exception("qemu supervisor check failed")

    def _tick(self) -> None:
        with self._lock:
            workloads = list(self._workloads.values())
        for w in workloads:
            # Busy means an operation owns the VM; look again next tick.
            if not w.op_lock.acquire(blocking=False):
                continue
            try:
                if w.deleted:
                    continue
                if w.child is not None and w.child.exited():
                    code = w.child.finish()
                    if code == 0:
                        what = "the guest powered off"
                    else:
                        what = (
                            f"QEMU exited with code {code}" if code is not None else "QEMU exited"
                        )
                    self._on_exit_locked(w, code, what)
                elif (
                    w.child is None
                    and w.restart_at is not None
                    and time.monotonic() >= w.restart_at
                ):
                    self._restart(w)
            finally:
                w.op_lock.release()

    def _restart(self, w: Vm) -> None:
        with self._lock:
            w.rt.restarts += 1
            reason = f"restart {w.rt.restarts} of {w.spec.max_restarts}"
            if w.rt.exit_code is not None:
                reason += f" after exit code {w.rt.exit_code}"
        try:
            self._restart_locked(w, reason)
        except DriverError as exc:
            with self._lock:
                w.want_running, w.restart_at = False, None
                w.rt.state, w.rt.reason = WorkloadState.FAILED, str(exc)
            self._persist(w)
