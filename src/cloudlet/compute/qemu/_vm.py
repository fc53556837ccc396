"""One QEMU process: launch it and wait for QMP, save and load its device state, shut it down.

Device state moves by QEMU migration to or from a file descriptor the driver opens and
hands over QMP (``getfd``), with the ``x-ignore-shared`` capability: guest RAM is a
shared file that stays where it is, so the saved state is only the devices (hundreds
of KiB) and suspend/resume cost milliseconds whatever the guest's size.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import psutil

from cloudlet.compute import _logfiles
from cloudlet.compute._logfiles import MARK_PREFIX, MAX_LOG_BYTES, rotate
from cloudlet.compute._proc import Child, SpawnedChild, group_alive, signal_group, spawn
from cloudlet.compute._proc import terminate as terminate_groups
from cloudlet.compute.qemu._config import CONSOLE_LOG, PID_FILE, QEMU_LOG
from cloudlet.compute.qemu._qmp import QmpSession
from cloudlet.errors import DriverError

_POLL = 0.02
_IGNORE_SHARED = {"capabilities": [{"capability": "x-ignore-shared", "state": True}]}


def mark(workload_dir: Path, message: str) -> None:
    """Append a driver line to qemu.log, so the driver's actions show among QEMU's output."""
    with contextlib.suppress(OSError):
        _logfiles.mark(workload_dir / QEMU_LOG, message)


def log_tail(workload_dir: Path, lines: int = 3) -> str:
    """QEMU's last output lines, without the driver's markers, for error messages."""
    try:
        text = (workload_dir / QEMU_LOG).read_text(errors="replace")
    except OSError:
        return ""
    kept = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith(MARK_PREFIX)]
    return " | ".join(kept[-lines:])


def fsync(path: Path) -> None:
    """Flush ``path``'s data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_sparse(source: Path, target: Path) -> None:
    """Copy an image, keeping holes (and sharing blocks where the filesystem can).

    Raises:
        DriverError: the copy failed; no partial ``target`` is left.
    """
    try:
        subprocess.run(
            ["cp", "--sparse=always", "--reflink=auto", str(source), str(target)],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        with contextlib.suppress(FileNotFoundError):
            target.unlink()
        detail = exc.stderr.strip() if isinstance(exc, subprocess.CalledProcessError) else exc
        raise DriverError(f"cannot copy {source}: {detail}") from exc


def reap_stray(workload_dir: Path, timeout: float = 5.0) -> int | None:
    """Kill a QEMU an earlier driver launched in ``workload_dir`` but never recorded
    (it died between the launch and the record); returns its pid, or None.

    Such a QEMU still holds the workload's pid file, and a new one could not start.
    It is ours if it runs in ``workload_dir`` (every launch does, as its cwd).
    """
    try:
        pid = int((workload_dir / PID_FILE).read_text().strip())
        proc = psutil.Process(pid)
        if Path(proc.cwd()) != workload_dir.resolve() or "qemu" not in proc.name():
            return None
    except (OSError, ValueError, psutil.Error):
        return None
    signal_group(pid, signal.SIGKILL)  # launched in a session of its own: pgid == pid
    deadline = time.monotonic() + timeout
    while group_alive(pid) and time.monotonic() < deadline:
        time.sleep(_POLL)
    return pid


def launch(command: list[str], workload_dir: Path, qmp: Path, timeout: float) -> SpawnedChild:
    """Start QEMU in its own session and wait until its QMP socket answers.

    Raises:
        DriverError: QEMU could not be executed, exited, or did not answer within
            ``timeout`` seconds (it is killed then); the message quotes qemu.log.
    """
    with contextlib.suppress(FileNotFoundError):
        qmp.unlink()
    for name in (CONSOLE_LOG, QEMU_LOG):
        with contextlib.suppress(OSError):
            rotate(workload_dir / name, MAX_LOG_BYTES)
    if (stray := reap_stray(workload_dir)) is not None:
        mark(workload_dir, f"killed QEMU {stray}, left unrecorded by an earlier driver")
    mark(workload_dir, "starting " + shlex.join(command))
    try:
        child = spawn(command, cwd=workload_dir, log_path=workload_dir / QEMU_LOG)
    except OSError as exc:
        raise DriverError(f"cannot run {command[0]}: {exc}") from exc
    deadline = time.monotonic() + timeout
    while True:
        if child.exited():
            code = child.finish()
            raise DriverError(f"QEMU exited with code {code}: {log_tail(workload_dir)}")
        if _listening(qmp):
            try:
                with QmpSession(qmp, timeout=max(0.5, deadline - time.monotonic())) as session:
                    session.execute("query-status")
                return child
            except DriverError as exc:
                if time.monotonic() > deadline:
                    terminate([child])
                    raise DriverError(f"QEMU did not answer on {qmp}: {exc}") from exc
        if time.monotonic() > deadline:
            terminate([child])
            raise DriverError(f"QEMU did not open {qmp} within {timeout:g}s")
        time.sleep(_POLL)


def _listening(path: Path) -> bool:
    """Whether a socket listens on ``path`` yet, read from /proc/net/unix without
    connecting: QEMU binds before it listens, and qemu.qmp logs an error for every
    refused attempt, while a probing connection would take QEMU's one monitor slot."""
    try:
        # This thread's network namespace (a driver may run in a thread that joined
        # another one); /proc/net follows the process's main thread.
        lines = Path("/proc/thread-self/net/unix").read_text().splitlines()[1:]
    except OSError:
        try:
            lines = Path("/proc/net/unix").read_text().splitlines()[1:]
        except OSError:
            return path.exists()
    target = str(path)
    for line in lines:
        fields = line.split(None, 7)
        # Num RefCount Protocol Flags Type St Inode Path; flag 0x10000 is __SO_ACCEPTCON.
        if len(fields) == 8 and fields[7] == target and int(fields[3], 16) & 0x10000:
            return True
    return False


def _wait_migration(session: QmpSession, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        info = session.execute("query-migrate")
        status = info.get("status")
        if status == "completed":
            return
        if status in ("failed", "cancelled"):
            raise DriverError(f"{what} failed: {info.get('error-desc', status)}")
        if time.monotonic() > deadline:
            raise DriverError(f"{what} did not finish within {timeout:g}s (status {status})")
        time.sleep(_POLL)


def save_state(qmp: Path, target: Path, timeout: float) -> None:
    """Pause the guest and write its device state to ``target`` (fsynced).

    On failure the guest is let run again and ``target`` removed.

    Raises:
        DriverError: QMP failed or the migration failed or timed out.
    """
    with QmpSession(qmp, timeout=timeout) as session:
        session.execute("stop")
        try:
            session.execute("migrate-set-capabilities", _IGNORE_SHARED)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                session.send_fd(fd, "vmstate")
            finally:
                os.close(fd)
            session.execute("migrate", {"uri": "fd:vmstate"})
            _wait_migration(session, timeout, "saving the VM state")
            fsync(target)
        except (DriverError, OSError) as exc:
            with contextlib.suppress(FileNotFoundError):
                target.unlink()
            with contextlib.suppress(DriverError):
                session.execute("migrate_cancel")
                session.execute("cont")
            if isinstance(exc, OSError):
                raise DriverError(f"cannot write {target}: {exc}") from exc
            raise


def load_state(qmp: Path, source: Path, timeout: float, on_loaded: Callable[[], None]) -> None:
    """Feed ``source`` to a QEMU started with ``-incoming defer -S``, call ``on_loaded``
    (the guest is still paused, its RAM untouched), then let the guest run.

    Raises:
        DriverError: the file could not be read, or the migration failed.
    """
    with QmpSession(qmp, timeout=timeout) as session:
        session.execute("migrate-set-capabilities", _IGNORE_SHARED)
        try:
            fd = os.open(source, os.O_RDONLY)
        except OSError as exc:
            raise DriverError(f"cannot read {source}: {exc}") from exc
        try:
            session.send_fd(fd, "vmstate")
        finally:
            os.close(fd)
        session.execute("migrate-incoming", {"uri": "fd:vmstate"})
        _wait_migration(session, timeout, "loading the VM state")
        on_loaded()
        session.execute("cont")


def run_state(qmp: Path, timeout: float = 5.0) -> str | None:
    """QEMU's run state (``running``, ``paused``, ``postmigrate``, ...); None if it does
    not answer."""
    try:
        with QmpSession(qmp, timeout=timeout) as session:
            return str(session.execute("query-status").get("status"))
    except DriverError:
        return None


def command(qmp: Path, name: str, timeout: float = 5.0) -> bool:
    """Send a best-effort command (``system_powerdown``, ``quit``); False if QEMU did
    not take it (it is gone, or its monitor is stuck)."""
    try:
        with QmpSession(qmp, timeout=timeout) as session:
            if name == "quit":
                session.execute_closing(name)
            else:
                session.execute(name)
    except DriverError:
        return False
    return True


def wait_exit(children: Iterable[Child], timeout: float) -> list[Child]:
    """Wait up to ``timeout`` seconds for the QEMUs to exit; return those still running."""
    pending = list(children)
    deadline = time.monotonic() + timeout
    while True:
        pending = [c for c in pending if not c.exited()]
        if not pending or time.monotonic() >= deadline:
            return pending
        time.sleep(_POLL)


def terminate(children: Iterable[Child], timeout: float = 5.0) -> list[Child]:
    """SIGTERM (QEMU quits at once), SIGKILL after ``timeout``, then reap.

    Returns:
        The children still alive after SIGKILL (stuck in the kernel); empty on success.
    """
    return terminate_groups(children, timeout)
