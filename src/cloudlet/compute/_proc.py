"""Process groups for every driver that runs a local program (process, qemu): start
one, watch it, signal it, reap its leader.

A workload is its process group: the leader is started in a new session, so its pid
is also the group id, and every signal goes to the whole group. Two kinds of handle:

* :class:`SpawnedChild` wraps a ``Popen`` this interpreter created. Only these are
  ever reaped (``waitpid`` on that one pid), so the driver never steals another
  component's children.
* :class:`AdoptedChild` is a group left running by an earlier agent. It is not our
  child, so it is watched through psutil and its exit code is unknown.
"""

from __future__ import annotations

import abc
import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import psutil

#: Two create times closer than this are the same process. psutil derives create time
#: from boot time, which moves a little when the wall clock is stepped; a different
#: process reusing the pid starts far later than the one recorded.
CREATE_TIME_TOLERANCE = 1.0

_POLL = 0.02

# Children left running by close(keep_running=True). Holding the Popen keeps the
# subprocess module from warning about it and from reaping it behind our back; a new
# driver in the same interpreter (tests, an in-process agent restart) takes it back.
_detached: dict[int, subprocess.Popen[bytes]] = {}
_detached_lock = threading.Lock()


def process_create_time(pid: int) -> float | None:
    """psutil create time of ``pid``, or None if there is no such process."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def group_alive(pgid: int) -> bool:
    """Whether any process of group ``pgid`` is alive (zombies do not count)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # killpg also succeeds for zombies, which linger where pid 1 does not reap orphans.
    for pid in psutil.pids():
        try:
            if os.getpgid(pid) == pgid and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                return True
        except (OSError, psutil.Error):
            continue
    return False


def signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def spawn(
    command: Sequence[str], *, cwd: Path, log_path: Path, env: Mapping[str, str] | None = None
) -> SpawnedChild:
    """Start ``command`` as the leader of a new session (so a new process group), stdin
    from /dev/null, stdout and stderr appended to ``log_path``.

    ``env`` None inherits this process's environment.

    Raises:
        OSError, ValueError: the log could not be opened or the command not executed.
    """
    with log_path.open("ab") as log:
        popen = subprocess.Popen(
            list(command),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    # Not reaped yet, so even an instantly exited child still has a create time.
    return SpawnedChild(popen, process_create_time(popen.pid) or 0.0)


class Child(abc.ABC):
    """A running workload's process group, led by ``pid``."""

    pid: int
    create_time: float
    #: The leader's exit status once reaped; stays None when it cannot be known.
    returncode: int | None = None

    @abc.abstractmethod
    def exited(self) -> bool:
        """Whether the leader has exited (without reaping it)."""

    @abc.abstractmethod
    def reap(self) -> int | None:
        """Collect the leader's exit status once it has exited; None if unknown."""

    @abc.abstractmethod
    def detach(self) -> None:
        """Let go of the group, leaving it running for a later driver to adopt."""

    @abc.abstractmethod
    def owns_group(self) -> bool:
        """Whether process group ``pid`` is still this workload's, so it may be signalled."""

    def signal(self, sig: int) -> None:
        if self.owns_group():
            signal_group(self.pid, sig)

    def finish(self) -> int | None:
        """After the leader exited: kill what is left of its group, then reap it."""
        if group_alive(self.pid):
            self.signal(signal.SIGKILL)
        return self.reap()


class SpawnedChild(Child):
    def __init__(self, popen: subprocess.Popen[bytes], create_time: float) -> None:
        self.popen = popen
        self.pid = popen.pid
        self.create_time = create_time

    def exited(self) -> bool:
        if self.popen.returncode is not None:
            return True
        try:
            result = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return result is not None

    def reap(self) -> int | None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.returncode = self.popen.wait(timeout=5.0)
        return self.returncode

    def detach(self) -> None:
        with _detached_lock:
            _detached[self.pid] = self.popen

    def owns_group(self) -> bool:
        # Until we reap the leader, its pid (the group id) cannot be handed to anyone.
        return self.popen.returncode is None


class AdoptedChild(Child):
    def __init__(self, pid: int, create_time: float) -> None:
        self.pid = pid
        self.create_time = create_time

    def exited(self) -> bool:
        try:
            proc = psutil.Process(self.pid)
            same = abs(proc.create_time() - self.create_time) < CREATE_TIME_TOLERANCE
            return not same or proc.status() == psutil.STATUS_ZOMBIE
        except psutil.Error:
            return True

    def reap(self) -> int | None:
        return None  # whoever is its parent now collects the status

    def detach(self) -> None:
        pass  # not our child: a later driver adopts it the same way

    def owns_group(self) -> bool:
        # The kernel hands out no pid still in use as a group id. So the group is ours
        # while the leader lives, and also once it is gone if stragglers keep the group;
        # only when the pid runs a *different* process is the group someone else's.
        try:
            proc = psutil.Process(self.pid)
            return abs(proc.create_time() - self.create_time) < CREATE_TIME_TOLERANCE
        except psutil.Error:
            return True


def adopt(pid: int, create_time: float) -> Child | None:
    """A handle on a group an earlier driver started, if ``pid`` is still that leader.

    The pid must be alive, not a zombie, lead its own group, and have the recorded
    create time; anything else means the workload died and the pid may belong to an
    unrelated process, which must never be signalled.
    """
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - create_time) >= CREATE_TIME_TOLERANCE:
            return None
        if proc.status() == psutil.STATUS_ZOMBIE or os.getpgid(pid) != pid:
            return None
    except (OSError, psutil.Error):
        return None
    with _detached_lock:
        popen = _detached.pop(pid, None)
    if popen is not None:
        return SpawnedChild(popen, create_time)
    return AdoptedChild(pid, create_time)


def terminate(children: Iterable[Child], timeout: float, kill_grace: float = 5.0) -> list[Child]:
    """Stop every group: SIGTERM, SIGKILL whatever is alive after ``timeout``, reap.

    The groups are stopped together, so stopping many costs one timeout, not one each.

    Returns:
        The children whose groups still had live processes ``kill_grace`` seconds
        after SIGKILL (stuck in the kernel); empty on success.
    """
    children = list(children)
    for child in children:
        child.signal(signal.SIGTERM)
    pending = _wait_groups(children, timeout)
    for child in pending:
        child.signal(signal.SIGKILL)
    stuck = _wait_groups(pending, kill_grace)
    for child in children:
        if child not in stuck:
            child.reap()
    return stuck


def _wait_groups(children: list[Child], timeout: float) -> list[Child]:
    deadline = time.monotonic() + timeout
    pending = [c for c in children if c.owns_group() and group_alive(c.pid)]
    while pending and time.monotonic() < deadline:
        time.sleep(_POLL)
        pending = [c for c in pending if c.owns_group() and group_alive(c.pid)]
    return pending
