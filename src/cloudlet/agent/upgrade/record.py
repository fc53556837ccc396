"""The upgrade record the supervisor and the agents share: the install that runs, the
trial under way, the last outcome.

One JSON file, ``data_dir/agent-versions/upgrade.json``, changed under an flock and
replaced atomically (written, fsynced, renamed), so a reader always sees a whole one.
Its format stays readable across versions: an agent a trial rolled back to reads what
a newer one wrote. Standard library only (the supervisor imports it).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Under data_dir: the installs and this record.
VERSIONS_DIR = "agent-versions"
FILE = "upgrade.json"
_LOCK = "upgrade.lock"

STAGED = "staged"  # installed and chosen; the supervisor starts it next
RUNNING = "running"  # started; it must commit within deadline_s
UPGRADED = "upgraded"
FAILED = "failed"


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


@dataclass
class Trial:
    """A switch to another install, on trial until that agent commits it."""

    id: str
    from_version: str
    to_version: str
    deadline_s: float
    state: str = STAGED
    staged_at: str = field(default_factory=now_iso)
    started_at: str | None = None


@dataclass
class Outcome:
    """How the last trial ended; the agent that runs afterwards reports it."""

    id: str  # the trial's
    phase: str  # UPGRADED or FAILED
    from_version: str
    to_version: str
    reason: str | None = None
    at: str = field(default_factory=now_iso)

    def event_data(self) -> dict[str, Any]:
        """The ``agent.upgrade`` event's data."""
        return {
            "phase": self.phase,
            "from": self.from_version,
            "to": self.to_version,
            "reason": self.reason,
        }


@dataclass
class Record:
    #: The version that runs once no trial is under way; None: the base install.
    current: str | None = None
    #: The base install (the one the supervisor runs from): its version and interpreter.
    base_version: str | None = None
    base_python: str | None = None
    trial: Trial | None = None
    outcome: Outcome | None = None

    @classmethod
    def from_json(cls, text: str) -> Record:
        raw = json.loads(text)
        trial, outcome = raw.get("trial"), raw.get("outcome")
        return cls(
            current=raw.get("current"),
            base_version=raw.get("base_version"),
            base_python=raw.get("base_python"),
            trial=Trial(**trial) if trial else None,
            outcome=Outcome(**outcome) if outcome else None,
        )

    def to_json(self) -> str:
        return json.dumps({"format": 1, **asdict(self)}, indent=2, sort_keys=True)


def versions_dir(data_dir: Path) -> Path:
    return data_dir / VERSIONS_DIR


def read(data_dir: Path) -> Record:
    """The record as it is now: an empty one before the first write, or if it cannot be
    read (then the base install runs and no trial is under way)."""
    path = versions_dir(data_dir) / FILE
    try:
        return Record.from_json(path.read_text())
    except FileNotFoundError:
        return Record()
    except (OSError, ValueError, TypeError) as exc:
        log.error("the upgrade record %s is unreadable (%s); starting from an empty one", path, exc)
        return Record()


def _write(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def update(data_dir: Path) -> Iterator[Record]:
    """Read the record under the lock, let the caller change it, write it back durably."""
    root = versions_dir(data_dir)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / _LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rec = read(data_dir)
        before = rec.to_json()
        yield rec
        if rec.to_json() != before:
            _write(root / FILE, rec.to_json())
