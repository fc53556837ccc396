"""``cloudlet agent supervise``: run the agent from the install the record names, restart
it when it exits, and roll a trial back by itself.

An agent that staged a trial exits with :data:`EXIT_SWITCH`; the supervisor marks the
trial running and starts the new install. That agent commits the trial itself once
it works (its site-local API answers and a reconcile pass ran); if instead it exits,
or has not committed within the trial's deadline, the supervisor kills it, records
the failure and starts the previous install again, whose agent reports it. None of
this needs the controller. A trial found running when the supervisor starts (the
machine or the supervisor went down during it) is failed the same way.

Stopping the supervisor (SIGTERM, SIGINT) stops the agent as ``agent run`` stops
(workloads too, unless ``--keep-workloads``; an agent on trial always keeps them, and
the trial fails at the next start). A killed trial agent leaves its workloads
running, as any killed agent does: the next agent adopts them. Standard
library only, besides the record and the installs: the supervisor is the one process
an upgrade never replaces, so it stays small.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import IO

from cloudlet import __version__
from cloudlet.agent._wait import Backoff
from cloudlet.agent.upgrade import installs, record

log = logging.getLogger(__name__)

#: The exit code with which an agent asks to be started again at once, from the
#: install the record names now (a staged trial, most often).
EXIT_SWITCH = 75
#: Set in the agent's environment when a supervisor runs it.
SUPERVISED_ENV = "CLOUDLET_AGENT_SUPERVISED"
#: How often a trial's record is looked at.
POLL_S = 0.2
#: An agent that ran this long before it exited restarts without a pause.
STABLE_S = 60.0


class Supervisor:
    """Runs agents one after another for one data directory.

    Args:
        data_dir: the agent's data directory (where the record and installs live).
        args: what follows ``python -m cloudlet.cli`` to run the agent (``agent run ...``).
        backoff_max_s: the longest pause before restarting an agent that crashed.
    """

    def __init__(self, data_dir: Path, args: Sequence[str], *, backoff_max_s: float) -> None:
        self.data_dir = data_dir
        self.args = list(args)
        self._backoff = Backoff(backoff_max_s)
        self._stopping = threading.Event()
        self._child: subprocess.Popen[bytes] | None = None

    # -- signals ------------------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._stopping.set()
        child = self._child
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)

    def run(self) -> int:
        """Supervise until SIGTERM or SIGINT; returns the exit code."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        self._begin()
        while not self._stopping.is_set():
            rec = record.read(self.data_dir)
            trial = rec.trial if rec.trial and rec.trial.state == record.STAGED else None
            python = self._start_trial(trial) if trial else self._current(rec)
            if python is None:
                continue  # the trial could not start: failed, back to the current one
            started = time.monotonic()
            code = self._run_child(python, trial)
            if self._stopping.is_set():
                break
            if code is None or (code == EXIT_SWITCH and record.read(self.data_dir).trial):
                continue  # rolled back, or a trial staged: start the next one at once
            if time.monotonic() - started > STABLE_S:
                self._backoff.reset()
            delay = self._backoff.next()
            log.warning("the agent exited with code %s; restarting it in %.1fs", code, delay)
            self._stopping.wait(delay)
        return 0

    # -- installs -----------------------------------------------------------------------

    def _begin(self) -> None:
        with record.update(self.data_dir) as rec:
            rec.base_version = __version__
            rec.base_python = os.path.abspath(sys.executable)
            if rec.trial is not None and rec.trial.state == record.RUNNING:
                _fail(rec, "the supervisor restarted during the trial")

    def _current(self, rec: record.Record) -> Path:
        python = installs.python_of(self.data_dir, rec.current, rec)
        if python is None:
            log.error("no install of agent %s here; running the base install", rec.current)
            return installs.python_of(self.data_dir, None, rec) or Path(sys.executable)
        return python

    def _start_trial(self, trial: record.Trial) -> Path | None:
        with record.update(self.data_dir) as rec:
            if rec.trial is None or rec.trial.id != trial.id:
                return None
            python = installs.python_of(self.data_dir, trial.to_version, rec)
            if python is None:
                _fail(rec, f"this site holds no install of agent {trial.to_version}")
                return None
            rec.trial.state = record.RUNNING
            rec.trial.started_at = record.now_iso()
        log.info(
            "starting agent %s on trial (from %s): it must be healthy within %gs",
            trial.to_version,
            trial.from_version,
            trial.deadline_s,
        )
        return python

    # -- one agent ----------------------------------------------------------------------

    def _run_child(self, python: Path, trial: record.Trial | None) -> int | None:
        """Run one agent until it exits. A trial agent not committed by its deadline, or
        exiting before, is killed and its trial failed. Returns the exit code; None when
        the supervisor stopped it or rolled it back."""
        env = {**os.environ, SUPERVISED_ENV: "1"}
        argv = [str(python), "-P", "-m", "cloudlet.cli", *self.args]
        child = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE)
        self._child = child
        if self._stopping.is_set():
            child.send_signal(signal.SIGTERM)
        assert child.stderr is not None
        tail = _StderrTail(child.stderr)
        try:
            if trial is not None and self._judge(child, trial, tail):
                return None
            # A signal interrupts this wait only to run the handler, which passes
            # SIGTERM on: the agent stops, then the wait returns.
            code = child.wait()
            return None if self._stopping.is_set() else code
        finally:
            self._child = None

    def _judge(
        self, child: subprocess.Popen[bytes], trial: record.Trial, tail: _StderrTail
    ) -> bool:
        """Watch a trial agent until it commits (False) or fails: then kill it, record the
        failure and return True. Stopping the supervisor meanwhile leaves the trial
        running in the record (failed at the next start) and returns False."""
        deadline = time.monotonic() + trial.deadline_s
        while not self._stopping.is_set():
            code = child.poll()
            if not self._still_on_trial(trial):
                log.info("agent %s is healthy: the upgrade is committed", trial.to_version)
                return False
            if code is None and time.monotonic() < deadline:
                self._stopping.wait(POLL_S)
                continue
            reason = f"agent {trial.to_version} " + (
                f"exited with code {code} before it was healthy: {tail.finish()}"
                if code is not None
                else f"was not healthy within {trial.deadline_s:g}s"
            )
            if not self._give_up(trial, reason):
                return False  # it committed just now
            _kill(child)
            log.warning("%s; rolling back to %s", reason, trial.from_version)
            return True
        return False

    def _still_on_trial(self, trial: record.Trial) -> bool:
        current = record.read(self.data_dir).trial
        return current is not None and current.id == trial.id

    def _give_up(self, trial: record.Trial, reason: str) -> bool:
        with record.update(self.data_dir) as rec:
            if rec.trial is None or rec.trial.id != trial.id:
                return False
            _fail(rec, reason)
            return True


def _fail(rec: record.Record, reason: str) -> None:
    """End the record's trial as failed: the current install stays the one that runs."""
    assert rec.trial is not None
    trial = rec.trial
    rec.outcome = record.Outcome(
        trial.id, record.FAILED, trial.from_version, trial.to_version, reason
    )
    rec.trial = None


def _kill(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is None:
        child.kill()
    child.wait()


class _StderrTail:
    """Passes a child's stderr on to the supervisor's, keeping its last line: what a
    crashed agent said last (its error) goes into the failure's reason."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.last = ""
        self._thread = threading.Thread(target=self._copy, args=(stream,), daemon=True)
        self._thread.start()

    def _copy(self, stream: IO[bytes]) -> None:
        out = sys.stderr.buffer
        for line in stream:
            with contextlib.suppress(OSError, ValueError):
                out.write(line)
                out.flush()
            if line.strip():
                self.last = line.decode(errors="replace").strip()[:300]

    def finish(self, timeout: float = 2.0) -> str:
        """The last line, once the stream ended (or ``timeout`` passed)."""
        self._thread.join(timeout)
        return self.last
