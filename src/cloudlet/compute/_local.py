"""The base of every driver of local process groups (process, qemu): the workload table
kept on disk under ``state_dir``, the contract methods that only need that table, and
adoption of what an earlier driver left running. Supervision: :mod:`._supervisor`.
"""

from __future__ import annotations

import abc
import fcntl
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

from cloudlet.compute._records import (
    SPEC_FILE,
    STATE_FILE,
    Runtime,
    read_json,
    spec_from_json,
    spec_to_json,
    valid_id,
    write_json,
)
from cloudlet.compute._supervisor import RUNNING, Supervisor, W
from cloudlet.compute.base import (
    ComputeDriver,
    WorkloadSpec,
    WorkloadState,
    WorkloadStatus,
    endpoint,
)
from cloudlet.errors import DriverError, WorkloadNotFoundError

logger = logging.getLogger(__name__)


class LocalDriver(Supervisor[W], ComputeDriver):
    """A driver whose workloads are process groups it starts, watches and restarts.

    Each workload lives in ``state_dir/<workload_id>/`` with its spec and runtime record
    (see :mod:`cloudlet.compute._records`), supervised as
    :class:`~cloudlet.compute._supervisor.Supervisor` describes.

    A new driver on the same ``state_dir`` (after an agent restart) knows every workload
    again: one recorded as running whose leader is still alive with the recorded create
    time is adopted, not started twice; if it is gone, that is an exit with an unknown
    code under the restart policy.

    A subclass calls ``_load()`` then ``_start_supervisor()`` at the end of its
    ``__init__`` and provides the abstract ``_*`` methods.
    """

    #: The runtime record this driver keeps for each workload.
    runtime_type: type[Runtime] = Runtime

    def __init__(
        self,
        state_dir: Path,
        *,
        host: str,
        stop_timeout: float,
        poll_interval: float,
        restart_backoff: float,
        max_backoff: float,
    ) -> None:
        super().__init__(poll_interval, restart_backoff, max_backoff)
        self.state_dir = Path(state_dir).absolute()
        self.host = host
        self.stop_timeout = stop_timeout
        self._closed = False

    @abc.abstractmethod
    def _new_workload(self, spec: WorkloadSpec, path: Path, rt: Runtime) -> W:
        """The table entry for a workload read back from ``path``."""

    @abc.abstractmethod
    def _stop_locked(self, workloads: list[W], timeout: float) -> None:
        """Stop the workloads together within ``timeout`` seconds (then forcibly), each
        recorded by :meth:`_record_stopped_locked`. Raises DriverError if one survives."""

    @abc.abstractmethod
    def _recover_locked(self, w: W) -> None:
        """Bring a record read back from disk in line with what is left of its leader,
        usually by :meth:`_rejoin_locked`."""

    def _prepare_dir(self, path: Path, spec: WorkloadSpec) -> None:
        """Fill a new workload's directory, built aside before it is renamed into place."""

    def _read_runtime(self, path: Path) -> Runtime:
        """The runtime record of the workload directory ``path``."""
        return self.runtime_type.from_json(read_json(path / STATE_FILE))

    def _release(self) -> None:
        """Free what the driver holds beyond its workloads, last thing at close()."""

    # -- the contract ----------------------------------------------------------------------

    def start(self, workload_id: str) -> WorkloadStatus:
        """Start the workload; a running one is left alone and its status returned.

        Raises:
            WorkloadNotFoundError: it was never created.
            DriverError: it is still stopping, or its leader could not be started (the
                cause is in the message and ``reason``).
        """
        w = self._get(workload_id)
        with w.op_lock:
            self._check_alive(w)
            if not w.want_running:
                if w.child is not None:
                    raise DriverError(f"workload {workload_id!r} is still stopping")
                with self._lock:
                    w.rt.restarts = 0
                self._run_locked(w)
            return self.status(workload_id)

    def stop(self, workload_id: str, timeout: float | None = None) -> None:
        """Stop the workload, forcibly after ``timeout`` seconds (default: the driver's
        ``stop_timeout``); see the driver's ``_stop_locked`` for how.

        Raises:
            WorkloadNotFoundError: it was never created.
            DriverError: its leader survived SIGKILL (stuck in the kernel).
        """
        w = self._get(workload_id)
        with w.op_lock:
            self._check_alive(w)
            self._stop_locked([w], self.stop_timeout if timeout is None else timeout)

    def delete(self, workload_id: str) -> None:
        """Stop the workload if needed, then remove its directory; a missing one succeeds."""
        self._check_open()
        trash: Path | None = None
        with self._lock:
            w = self._workloads.get(workload_id)
            if w is None and valid_id(workload_id):
                # A directory an earlier driver could not read is a trace too. Moved
                # aside under the lock, so a concurrent create of this id is unharmed.
                trash = self._move_aside(workload_id)
        if w is not None:
            with w.op_lock:
                self._check_open()
                if w.deleted:
                    return
                self._stop_locked([w], self.stop_timeout)
                with self._lock:
                    trash = self._move_aside(workload_id)
                    w.deleted = True
                    del self._workloads[workload_id]
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)

    def status(self, workload_id: str) -> WorkloadStatus:
        with self._lock:
            w = self._workloads.get(workload_id)
            if w is None:
                return WorkloadStatus(workload_id, WorkloadState.ABSENT)
            where = None
            if w.spec.port is not None and w.rt.state is RUNNING:
                where = endpoint(self.host, w.spec.port)
            return WorkloadStatus(
                workload_id=workload_id,
                state=w.rt.state,
                endpoint=where,
                pid=w.child.pid if w.child is not None else None,
                restarts=w.rt.restarts,
                exit_code=w.rt.exit_code,
                reason=w.rt.reason,
            )

    def list(self) -> list[str]:
        with self._lock:
            return sorted(self._workloads)

    def close(self, keep_running: bool = False) -> None:
        """Stop supervising. Unless ``keep_running``, stop every workload first (all at
        once, one ``stop_timeout`` in all), recording them as STOPPED.

        With ``keep_running`` the leaders stay up and their records say RUNNING, for a
        later driver on the same ``state_dir`` to adopt. Closing twice is a no-op;
        create/start/stop/delete on a closed driver raise DriverError.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            workloads = sorted(self._workloads.values(), key=lambda w: w.spec.workload_id)
        self._stop_supervisor()
        for w in workloads:
            w.op_lock.acquire()
        try:
            if keep_running:
                for w in workloads:
                    if w.child is not None:
                        w.child.detach()
            else:
                running = [w for w in workloads if w.want_running or w.child is not None]
                self._stop_locked(running, self.stop_timeout)
        finally:
            for w in workloads:
                w.op_lock.release()
            self._release()

    # -- the table -----------------------------------------------------------------------

    def _create(self, spec: WorkloadSpec, build: Callable[[Path, Runtime], W]) -> None:
        """Record a checked spec in a new directory and the table; nothing runs yet.
        Creating an existing workload with an equal spec succeeds.

        Raises:
            DriverError: the workload exists with a different spec, or the directory
                could not be written. Nothing is left behind.
        """
        workload_id = spec.workload_id
        with self._lock:
            existing = self._workloads.get(workload_id)
            if existing is not None:
                if spec_to_json(existing.spec) == spec_to_json(spec):
                    return
                raise DriverError(f"workload {workload_id!r} exists with a different spec")
            path = self.state_dir / workload_id
            tmp: Path | None = None
            try:
                # Built aside and renamed into place: a crash never leaves half a workload.
                tmp = Path(tempfile.mkdtemp(prefix=f".create-{workload_id}-", dir=self.state_dir))
                self._prepare_dir(tmp, spec)
                write_json(tmp / SPEC_FILE, spec_to_json(spec))
                write_json(tmp / STATE_FILE, self.runtime_type().to_json())
                os.rename(tmp, path)
            except (OSError, DriverError) as exc:
                if tmp is not None:
                    shutil.rmtree(tmp, ignore_errors=True)
                raise DriverError(f"cannot create workload {workload_id!r}: {exc}") from exc
            self._workloads[workload_id] = build(path, self.runtime_type())

    def _check_open(self) -> None:
        if self._closed:
            raise DriverError(f"the {self.name} driver is closed")

    def _find(self, workload_id: str) -> W:
        with self._lock:
            w = self._workloads.get(workload_id)
        if w is None:
            raise WorkloadNotFoundError(f"no workload {workload_id!r}")
        return w

    def _get(self, workload_id: str) -> W:
        """The open driver's workload ``workload_id``."""
        self._check_open()
        return self._find(workload_id)

    def _check_alive(self, w: W) -> None:
        """Under op_lock: the driver is still open and the workload not deleted meanwhile."""
        self._check_open()
        if w.deleted:
            raise WorkloadNotFoundError(f"no workload {w.spec.workload_id!r}")

    def _move_aside(self, workload_id: str) -> Path | None:
        """Rename the workload's directory to a trash name for removal; None if absent.

        The id is gone at once even if the removal is cut short; _load sweeps leftovers.
        """
        trash = self.state_dir / f".delete-{workload_id}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(self.state_dir / workload_id, trash)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise DriverError(f"cannot delete workload {workload_id!r}: {exc}") from exc
        return trash

    def _load(self) -> None:
        """Read every workload recorded under ``state_dir``; recover each one."""
        for entry in sorted(self.state_dir.iterdir()):
            if entry.name.startswith((".create-", ".delete-")) and entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
                continue
            if not entry.is_dir() or not valid_id(entry.name):
                continue
            try:
                spec = spec_from_json(read_json(entry / SPEC_FILE))
                rt = self._read_runtime(entry)
                if spec.workload_id != entry.name:
                    raise DriverError(f"spec names {spec.workload_id!r}")
            except (DriverError, KeyError, TypeError, ValueError) as exc:
                logger.warning("ignoring unreadable workload directory %s: %s", entry, exc)
                continue
            w = self._new_workload(spec, entry, rt)
            self._workloads[spec.workload_id] = w
            with w.op_lock:
                self._recover_locked(w)


def lock_state_dir(state_dir: Path, driver: str) -> int:
    """Create ``state_dir`` and lock it, so two drivers never supervise the same workloads.

    Returns:
        The descriptor holding the lock (``flock`` on ``state_dir/.lock``); closing it
        releases the lock. It is not inherited by children, so a workload left running
        never keeps the dir locked.

    Raises:
        DriverError: the dir cannot be created, or another driver holds it.
    """
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(state_dir / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise DriverError(f"cannot use state dir {state_dir}: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        raise DriverError(f"state dir {state_dir} is in use by another {driver} driver") from exc
    return fd
