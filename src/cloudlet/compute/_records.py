"""On-disk records every driver keeps: one directory per workload, JSON written atomically.

Each driver's ``state_dir/<workload_id>/`` holds at least::

    spec.json      the WorkloadSpec, written once by create()
    state.json     the runtime record (state, pid, create time, restarts, ...), rewritten on change

and whatever else the driver needs beside them (see its ``_store`` or ``_config``).
"""

from __future__ import annotations

import contextlib
import dataclasses
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

# Ids become directory names, so they must not be able to escape state_dir.
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def valid_id(workload_id: str) -> bool:
    """Whether ``workload_id`` is usable as a directory name under the state dir."""
    return isinstance(workload_id, str) and _ID_RE.fullmatch(workload_id) is not None


def check_id(workload_id: str) -> None:
    """Raise DriverError unless ``workload_id`` is :func:`valid_id`."""
    if not valid_id(workload_id):
        raise DriverError(
            f"invalid workload id {workload_id!r}: use 1-128 letters, digits, '.', '_' or '-',"
            " starting with a letter or digit"
        )


@dataclass
class Runtime:
    """What a driver remembers about a workload between agent restarts. Drivers that
    remember more subclass it with more optional fields."""

    state: WorkloadState = WorkloadState.CREATED
    pid: int | None = None
    create_time: float | None = None  # psutil create_time of ``pid``, to detect pid reuse
    restarts: int = 0
    exit_code: int | None = None
    reason: str | None = None

    def forget_process(self) -> None:
        """Clear what belonged to the process that ran the workload, now gone."""
        self.pid = None
        self.create_time = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = self.state.value
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Runtime:
        rest = {
            f.name: data.get(f.name)
            for f in dataclasses.fields(cls)
            if f.name not in ("state", "restarts")
        }
        return cls(
            state=WorkloadState(data["state"]), restarts=int(data.get("restarts", 0)), **rest
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
