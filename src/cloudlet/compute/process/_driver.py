"""ProcessDriver: runs each workload's command as a supervised process group, no hypervisor."""

from __future__ import annotations

import fcntl
import logging
import os
import shlex
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path

from cloudlet.compute._logfiles import MAX_LOG_BYTES, mark, read_tail, rotate
from cloudlet.compute._proc import Child, adopt, spawn
from cloudlet.compute._proc import terminate as terminate_groups
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
from cloudlet.compute.base import (
    ComputeDriver,
    RestartPolicy,
    WorkloadSpec,
    WorkloadState,
    WorkloadStatus,
)
from cloudlet.compute.process._spec import child_env, validate
from cloudlet.compute.process._store import LOG_FILE, WORK_DIR
from cloudlet.errors import DriverError, WorkloadNotFoundError

logger = logging.getLogger(__name__)


class _Workload:
    """The driver's view of one workload. Guarded as described in ProcessDriver."""

    def __init__(self, spec: WorkloadSpec, path: Path, runtime: Runtime) -> None:
        self.spec = spec
        self.path = path
        self.rt = runtime
        self.child: Child | None = None
        self.want_running = runtime.state is WorkloadState.RUNNING
        self.restart_at: float | None = None  # time.monotonic() of a pending restart
        self.deleted = False
        # Held for a whole start/stop/delete and by the supervisor while it acts on the
        # workload, so a restart never races a stop.
        self.op_lock = threading.Lock()


class ProcessDriver(ComputeDriver):
    """Runs ``spec.command`` as a child process in its own session and process group.

    Each workload lives in ``state_dir/<workload_id>/``: its spec and runtime record
    (JSON, replaced atomically), ``console.log`` (stdout and stderr, appended across
    restarts) and ``work/``, the child's working directory. The child's environment
    is ``INHERITED_ENV`` from the agent, then ``spec.env``, then
    ``CLOUDLET_WORKLOAD_ID`` and, when the spec has a port, ``PORT``. One driver at a
    time may use a state dir (an exclusive lock on ``state_dir/.lock``).

    One supervisor thread per driver polls the children every ``poll_interval``
    seconds and applies the restart policy with exponential backoff
    (``restart_backoff`` doubling per restart, capped at ``max_backoff``). Only pids
    this driver spawned are ever waited for. While a restart is pending the workload
    reports RUNNING with no pid. ``restarts`` counts restarts since the last start().

    A new driver on the same ``state_dir`` (after an agent restart) knows every
    workload again. A workload recorded as running whose pid is still alive with the
    recorded psutil create time is adopted, not started twice; if it is gone, it is
    handled as an exit with an unknown code under its restart policy.

    Capabilities: ``survives_agent`` (``close(keep_running=True)`` leaves the groups
    running for the next driver). No ``suspend``: stopping a group with SIGSTOP
    keeps its memory only in RAM, which is not the saved state the contract means.

    Args:
        state_dir: where the driver keeps one directory per workload; created if needed.
        host: the address endpoints are reported on.
        stop_timeout: seconds between SIGTERM and SIGKILL when no timeout is given.
        poll_interval: seconds between two supervisor checks.
        restart_backoff: delay before the first restart; doubles with each restart.
        max_backoff: the longest delay between two restarts.
    """

    name = "process"
    capabilities = {"suspend": False, "survives_agent": True}

    def __init__(
        self,
        state_dir: Path,
        *,
        host: str = "127.0.0.1",
        stop_timeout: float = 10.0,
        poll_interval: float = 0.1,
        restart_backoff: float = 0.5,
        max_backoff: float = 30.0,
    ) -> None:
        self.state_dir = Path(state_dir).absolute()
        self.host = host
        self.stop_timeout = stop_timeout
        self._poll_interval = poll_interval
        self._backoff = restart_backoff
        self._max_backoff = max_backoff
        # Guards the table and every _Workload field that status() reads.
        self._lock = threading.Lock()
        self._workloads: dict[str, _Workload] = {}
        self._closed = False
        self._wake = threading.Event()
        self._lock_fd = _lock_state_dir(self.state_dir)
        try:
            self._load()
        except BaseException:
            os.close(self._lock_fd)
            raise
        self._thread = threading.Thread(
            target=self._supervise, name="cloudlet-process-supervisor", daemon=True
        )
        self._thread.start()

    # -- the contract ------------------------------------------------------------------

    def create(self, spec: WorkloadSpec) -> None:
        """Record the workload and prepare its directory; nothing runs yet.

        The command is checked here, so a typo fails at create: ``command[0]`` must be
        an absolute path to an executable or a name found on the PATH the child will
        see. Creating an existing workload with an equal spec succeeds.

        Raises:
            DriverError: bad id, empty or unknown command, malformed env, the workload
                exists with a different spec, or the directory could not be written.
                Nothing is left behind.
        """
        self._check_open()
        validate(spec)
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
                (tmp / WORK_DIR).mkdir()
                write_json(tmp / SPEC_FILE, spec_to_json(spec))
                write_json(tmp / STATE_FILE, Runtime().to_json())
                os.rename(tmp, path)
            except OSError as exc:
                if tmp is not None:
                    shutil.rmtree(tmp, ignore_errors=True)
                raise DriverError(f"cannot create workload {workload_id!r}: {exc}") from exc
            self._workloads[workload_id] = _Workload(spec, path, Runtime())

    def start(self, workload_id: str) -> WorkloadStatus:
        """Spawn the command; a running workload is left alone and its status returned.

        Raises:
            WorkloadNotFoundError: it was never created.
            DriverError: the command could not be executed (the state is unchanged and
                the cause is in ``reason``).
        """
        self._check_open()
        w = self._get(workload_id)
        with w.op_lock:
            self._check_open()
            self._check_alive(w)
            if w.want_running:
                with self._lock:
                    return self._status(w)
            if w.child is not None:
                raise DriverError(f"workload {workload_id!r} is still stopping")
            with self._lock:
                w.rt.restarts = 0
            self._spawn(w)
            with self._lock:
                return self._status(w)

    def stop(self, workload_id: str, timeout: float | None = None) -> None:
        """SIGTERM the workload's process group, SIGKILL it after ``timeout`` seconds
        (default: the driver's ``stop_timeout``), and reap the leader.

        Raises:
            WorkloadNotFoundError: it was never created.
            DriverError: the group survived SIGKILL (stuck in the kernel).
        """
        self._check_open()
        w = self._get(workload_id)
        with w.op_lock:
            self._check_open()
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
            return self._status(w)

    def list(self) -> list[str]:
        with self._lock:
            return sorted(self._workloads)

    def log(self, workload_id: str, tail_bytes: int = 64 * 1024) -> str:
        """The last ``tail_bytes`` of the console log (decoded as UTF-8, bad bytes replaced).

        Raises:
            WorkloadNotFoundError: unknown workload.
        """
        w = self._get(workload_id)
        return read_tail(w.path / LOG_FILE, tail_bytes, f"the log of {workload_id!r}")

    def close(self, keep_running: bool = False) -> None:
        """Stop supervising. Unless ``keep_running``, stop every workload first (all
        groups at once, one ``stop_timeout`` in all), recording them as STOPPED.

        With ``keep_running`` the groups stay up and their records say RUNNING, for a
        later driver on the same ``state_dir`` to adopt. Closing twice is a no-op;
        create/start/stop/delete on a closed driver raise DriverError.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            workloads = sorted(self._workloads.values(), key=lambda w: w.spec.workload_id)
        self._wake.set()
        self._thread.join()
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
            os.close(self._lock_fd)

    # -- internals; methods named *_locked expect the callers to hold op_lock ----------------

    def _check_open(self) -> None:
        if self._closed:
            raise DriverError("the process driver is closed")

    def _get(self, workload_id: str) -> _Workload:
        with self._lock:
            w = self._workloads.get(workload_id)
        if w is None:
            raise WorkloadNotFoundError(f"no workload {workload_id!r}")
        return w

    def _check_alive(self, w: _Workload) -> None:
        if w.deleted:
            raise WorkloadNotFoundError(f"no workload {w.spec.workload_id!r}")

    def _status(self, w: _Workload) -> WorkloadStatus:
        state = w.rt.state
        endpoint = None
        if w.spec.port is not None and state is WorkloadState.RUNNING:
            host = f"[{self.host}]" if ":" in self.host else self.host
            endpoint = f"{host}:{w.spec.port}"
        return WorkloadStatus(
            workload_id=w.spec.workload_id,
            state=state,
            endpoint=endpoint,
            pid=w.child.pid if w.child is not None else None,
            restarts=w.rt.restarts,
            exit_code=w.rt.exit_code,
            reason=w.rt.reason,
        )

    def _persist(self, w: _Workload) -> None:
        """Write the runtime record; callers hold op_lock, so writes never interleave."""
        if w.deleted:
            return
        with self._lock:
            data = w.rt.to_json()
        try:
            write_json(w.path / STATE_FILE, data)
        except OSError as exc:
            raise DriverError(f"cannot record the state of {w.spec.workload_id!r}: {exc}") from exc

    def _mark(self, w: _Workload, message: str) -> None:
        """Append a driver line to the console log, so restarts show up among the output."""
        try:
            mark(w.path / LOG_FILE, message)
        except OSError:
            logger.warning("cannot write the log of %s", w.spec.workload_id, exc_info=True)

    def _spawn(self, w: _Workload, reason: str | None = None) -> None:
        spec = w.spec
        log_path = w.path / LOG_FILE
        try:
            rotate(log_path, MAX_LOG_BYTES)
        except OSError:
            logger.warning("cannot rotate %s", log_path, exc_info=True)
        command = shlex.join(spec.command).replace("\n", "\\n")
        if len(command) > 300:
            command = command[:299] + "…"
        self._mark(w, f"starting {command}")
        try:
            child = spawn(
                spec.command, cwd=w.path / WORK_DIR, log_path=log_path, env=child_env(spec)
            )
        except (OSError, ValueError) as exc:
            message = f"cannot start workload {spec.workload_id!r}: {exc}"
            self._mark(w, message)
            with self._lock:
                w.rt.reason = message
            self._persist(w)
            raise DriverError(message) from exc
        with self._lock:
            w.child = child
            w.want_running = True
            w.restart_at = None
            w.rt.state = WorkloadState.RUNNING
            w.rt.pid = child.pid
            w.rt.create_time = child.create_time
            w.rt.exit_code = None
            w.rt.reason = reason
        self._persist(w)

    def _stop_locked(self, workloads: list[_Workload], timeout: float) -> None:
        children = {w.child: w for w in workloads if w.child is not None}
        with self._lock:
            for w in workloads:
                w.want_running = False
                w.restart_at = None
        stuck = set(terminate_groups(children, timeout)) if children else set()
        for w in workloads:
            if w.child in stuck:
                continue
            with self._lock:
                if w.child is not None:
                    w.rt.exit_code = w.child.returncode
                    w.rt.reason = "stopped"
                elif w.rt.state is WorkloadState.RUNNING:
                    w.rt.reason = "stopped"  # it was waiting for a restart
                w.child = None
                w.rt.state = WorkloadState.STOPPED
                w.rt.pid = None
                w.rt.create_time = None
            self._persist(w)
        if stuck:
            ids = ", ".join(children[c].spec.workload_id for c in stuck)
            raise DriverError(f"process groups of {ids} survived SIGKILL")

    def _on_exit_locked(self, w: _Workload, code: int | None, what: str) -> None:
        """Record that the leader is gone and apply the restart policy."""
        spec = w.spec
        with self._lock:
            w.child = None
            rt = w.rt
            rt.pid = None
            rt.create_time = None
            rt.exit_code = code
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
        self._mark(w, reason)
        self._persist(w)

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
        """Read every workload recorded under state_dir; adopt the groups still running."""
        for entry in sorted(self.state_dir.iterdir()):
            if entry.name.startswith((".create-", ".delete-")) and entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
                continue
            if not entry.is_dir() or not valid_id(entry.name):
                continue
            try:
                spec = spec_from_json(read_json(entry / SPEC_FILE))
                state_file = entry / STATE_FILE
                rt = Runtime.from_json(read_json(state_file)) if state_file.exists() else Runtime()
                if spec.workload_id != entry.name:
                    raise DriverError(f"spec names {spec.workload_id!r}")
            except (DriverError, KeyError, TypeError, ValueError) as exc:
                logger.warning("ignoring unreadable workload directory %s: %s", entry, exc)
                continue
            if rt.state is WorkloadState.SUSPENDED:
                rt.state = WorkloadState.STOPPED  # not produced by this driver
            w = _Workload(spec, entry, rt)
            self._workloads[spec.workload_id] = w
            if rt.state is not WorkloadState.RUNNING:
                continue
            child = None
            if rt.pid is not None and rt.create_time is not None:
                child = adopt(rt.pid, rt.create_time)
            if child is not None:
                w.child = child
            elif rt.pid is None:
                w.restart_at = time.monotonic()  # it was waiting for a restart
            else:
                with w.op_lock:
                    self._on_exit_locked(
                        w, None, f"process {rt.pid} was gone when the driver started"
                    )

    def _supervise(self) -> None:
        while not self._wake.wait(self._poll_interval):
            try:
                self._tick()
            except Exception:
                logger.exception("process supervisor check failed")

    def _tick(self) -> None:
        with self._lock:
            workloads = list(self._workloads.values())
        for w in workloads:
            # Busy means a start/stop/delete owns the workload; look again next tick.
            if not w.op_lock.acquire(blocking=False):
                continue
            try:
                if w.deleted:
                    continue
                if w.child is not None and w.child.exited():
                    code = w.child.finish()
                    what = f"exited with code {code}" if code is not None else "exited"
                    self._on_exit_locked(w, code, what)
                elif (
                    w.child is None
                    and w.restart_at is not None
                    and time.monotonic() >= w.restart_at
                ):
                    self._restart_locked(w)
            finally:
                w.op_lock.release()

    def _restart_locked(self, w: _Workload) -> None:
        with self._lock:
            w.rt.restarts += 1
            reason = f"restart {w.rt.restarts} of {w.spec.max_restarts}"
            if w.rt.exit_code is not None:
                reason += f" after exit code {w.rt.exit_code}"
        try:
            self._spawn(w, reason)
        except DriverError as exc:
            with self._lock:
                w.want_running = False
                w.restart_at = None
                w.rt.state = WorkloadState.FAILED
                w.rt.reason = str(exc)
            self._persist(w)


def _lock_state_dir(state_dir: Path) -> int:
    """Create ``state_dir`` and lock it, so two drivers never supervise the same workloads.

    Returns:
        The descriptor holding the lock; closing it releases the lock. It is not
        inherited by children, so a workload left running never keeps the dir locked.
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
        raise DriverError(f"state dir {state_dir} is in use by another process driver") from exc
    return fd
