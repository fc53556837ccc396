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
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cloudlet.compute.base import RestartPolicy, WorkloadSpec, WorkloadState
from cloudlet.errors import DriverError

SPEC_FILE = "spec.json"
STATE_FILE = "state.json"
LOG_FILE = "console.log"
WORK_DIR = "work"

# Ids become directory names, so they must not be able to escape state_dir.
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def valid_id(workload_id: str) -> bool:
    """Whether ``workload_id`` is usable as a directory name under the state dir."""
    return isinstance(workload_id, str) and _ID_RE.fullmatch(workload_id) is not None


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


def spec_to_json(spec: WorkloadSpec) -> dict[str, Any]:
    """A JSON-ready dict of ``spec``; the inverse of :func:`spec_from_json`."""
    return {
        "workload_id": spec.workload_id,
        "command": list(spec.command),
        "env": dict(spec.env),
        "port": spec.port,
        "guest_port": spec.guest_port,
        "vcpus": spec.vcpus,
        "memory_mib": spec.memory_mib,
        "disk_image": str(spec.disk_image) if spec.disk_image is not None else None,
        "memory_image": str(spec.memory_image) if spec.memory_image is not None else None,
        "restart": RestartPolicy(spec.restart).value,
        "max_restarts": spec.max_restarts,
    }


def spec_from_json(data: dict[str, Any]) -> WorkloadSpec:
    disk, memory = data.get("disk_image"), data.get("memory_image")
    return WorkloadSpec(
        workload_id=data["workload_id"],
        command=tuple(data["command"]),
        env=dict(data["env"]),
        port=data.get("port"),
        guest_port=data.get("guest_port"),
        vcpus=data.get("vcpus", 1.0),
        memory_mib=data.get("memory_mib", 256),
        disk_image=Path(disk) if disk is not None else None,
        memory_image=Path(memory) if memory is not None else None,
        restart=RestartPolicy(data.get("restart", RestartPolicy.ON_FAILURE.value)),
        max_restarts=data.get("max_restarts", 5),
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
