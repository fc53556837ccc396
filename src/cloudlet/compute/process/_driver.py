"""ProcessDriver: runs each workload's command as a supervised process group, no hypervisor."""

from __future__ import annotations

import logging
import os
import shlex
from pathlib import Path

from cloudlet.compute._local import LocalDriver, lock_state_dir
from cloudlet.compute._logfiles import MAX_LOG_BYTES, mark, read_tail, rotate
from cloudlet.compute._proc import spawn
from cloudlet.compute._proc import terminate as terminate_groups
from cloudlet.compute._records import STATE_FILE, Runtime
from cloudlet.compute._supervisor import Workload
from cloudlet.compute.base import WorkloadSpec, WorkloadState
from cloudlet.compute.process._spec import child_env, validate
from cloudlet.compute.process._store import LOG_FILE, WORK_DIR
from cloudlet.errors import DriverError

logger = logging.getLogger(__name__)


class ProcessDriver(LocalDriver[Workload]):
    """Runs ``spec.command`` as a child process in its own session and process group.

    Each workload lives in ``state_dir/<workload_id>/``: its spec and runtime record
    (JSON, replaced atomically), ``console.log`` (stdout and stderr, appended across
    restarts) and ``work/``, the child's working directory. The child's environment
    is ``INHERITED_ENV`` from the agent, then ``spec.env``, then
    ``CLOUDLET_WORKLOAD_ID`` and, when the spec has a port, ``PORT``. One driver at a
    time may use a state dir (an exclusive lock on ``state_dir/.lock``).

    Supervised as :class:`~cloudlet.compute._local.LocalDriver` says: restart
    policies with backoff, and adoption of the groups still running by a new driver on
    the same ``state_dir``. Only pids this driver spawned are ever waited for.

    Capabilities: ``survives_agent`` (``close(keep_running=True)`` leaves the groups
    running for the next driver) and ``listens`` (RUNNING means spawned: the command
    binds ``PORT`` itself, some time later). No ``suspend``: stopping a group with SIGSTOP
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
    capabilities = {"suspend": False, "survives_agent": True, "listens": True}

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
        super().__init__(
            state_dir,
            host=host,
            stop_timeout=stop_timeout,
            poll_interval=poll_interval,
            restart_backoff=restart_backoff,
            max_backoff=max_backoff,
        )
        self._lock_fd = lock_state_dir(self.state_dir, self.name)
        try:
            self._load()
        except BaseException:
            os.close(self._lock_fd)
            raise
        self._start_supervisor()

    # -- the contract (start, stop, delete, status, list, close: LocalDriver) -------

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
        self._create(spec, lambda path, rt: Workload(spec, path, rt))

    def log(self, workload_id: str, tail_bytes: int = 64 * 1024) -> str:
        """The last ``tail_bytes`` of the console log (decoded as UTF-8, bad bytes replaced).

        Raises:
            WorkloadNotFoundError: unknown workload.
        """
        w = self._find(workload_id)
        return read_tail(w.path / LOG_FILE, tail_bytes, f"the log of {workload_id!r}")

    # -- what LocalDriver asks of a driver ------------------------------------------

    def _new_workload(self, spec: WorkloadSpec, path: Path, rt: Runtime) -> Workload:
        return Workload(spec, path, rt)

    def _prepare_dir(self, path: Path, spec: WorkloadSpec) -> None:
        (path / WORK_DIR).mkdir()

    def _read_runtime(self, path: Path) -> Runtime:
        if not (path / STATE_FILE).exists():
            return Runtime()
        return super()._read_runtime(path)

    def _release(self) -> None:
        os.close(self._lock_fd)

    def _mark(self, w: Workload, message: str) -> None:
        try:
            mark(w.path / LOG_FILE, message)
        except OSError:
            logger.warning("cannot write the log of %s", w.spec.workload_id, exc_info=True)

    def _exit_reason(self, code: int | None) -> str:
        return f"exited with code {code}" if code is not None else "exited"

    def _run_locked(self, w: Workload, reason: str | None = None) -> None:
        """Spawn the command (the leader of a new session) with its output appended to
        the console log, which is rotated first if it grew past MAX_LOG_BYTES."""
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

    def _stop_locked(self, workloads: list[Workload], timeout: float) -> None:
        """SIGTERM the process groups together, SIGKILL them after ``timeout`` seconds,
        and reap the leaders."""
        children = {w.child: w for w in workloads if w.child is not None}
        self._halt(workloads)
        stuck = set(terminate_groups(children, timeout)) if children else set()
        for w in workloads:
            if w.child not in stuck:
                self._record_stopped_locked(w, w.child.returncode if w.child is not None else None)
        if stuck:
            ids = ", ".join(children[c].spec.workload_id for c in stuck)
            raise DriverError(f"process groups of {ids} survived SIGKILL")

    def _recover_locked(self, w: Workload) -> None:
        if w.rt.state is WorkloadState.SUSPENDED:
            w.rt.state = WorkloadState.STOPPED  # not produced by this driver
        if w.rt.state is WorkloadState.RUNNING:
            self._rejoin_locked(w, self._adopt(w))
