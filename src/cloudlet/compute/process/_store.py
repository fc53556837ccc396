"""On-disk records of the process driver: one directory per workload, JSON written atomically.

Layout of ``state_dir/<workload_id>/``::

    spec.json      the WorkloadSpec, written once by create()
    state.json     runtime record (state, pid, create time, restarts, ...), rewritten on change
    console.log    the child's stdout and stderr, plus driver marker lines
    work/          the child's working directory
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cloudlet.compute.base import WorkloadState
from cloudlet.errors import DriverError

SPEC_FILE = "spec.json"
STATE_FILE = "state.json"
LOG_FILE = "console.log"
WORK_DIR = "work"


@dataclass
class Runtime:
    """What the driver remembers about a workload between agent restarts."""

    state: WorkloadState = WorkloadState.CREATED
    pid: int | None = None
    create_time: float | None = None  # psutil create_time of ``pid``, to detect pid reuse
    restarts: int = 0
    exit_code: int | None = None
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = self.state.value
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Runtime:
        return cls(
            state=WorkloadState(data["state"]),
            pid=data.get("pid"),
            create_time=data.get("create_time"),
            restarts=int(data.get("restarts", 0)),
            exit_code=data.get("exit_code"),
            reason=data.get("reason"),
        )


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Replace ``path`` with ``data`` atomically: readers see the old or the new file whole."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_json(path: Path) -> dict[str, Any]:
    try:
        with path.open(encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise DriverError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise DriverError(f"cannot read {path}: not a JSON object")
    return data
