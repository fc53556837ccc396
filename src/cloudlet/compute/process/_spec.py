"""What the process driver asks of a WorkloadSpec, how it stores one, and the child's env."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

from cloudlet.compute.base import RestartPolicy, WorkloadSpec
from cloudlet.errors import DriverError

#: Variables a child inherits from the agent's environment; everything else it gets
#: from its spec, so a workload never sees the agent's credentials or settings.
INHERITED_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")

# Ids become directory names, so they must not be able to escape state_dir.
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def valid_id(workload_id: str) -> bool:
    """Whether ``workload_id`` is usable as a directory name under the state dir."""
    return isinstance(workload_id, str) and _ID_RE.fullmatch(workload_id) is not None


def child_env(spec: WorkloadSpec) -> dict[str, str]:
    """:data:`INHERITED_ENV`, then ``spec.env``, then ``CLOUDLET_WORKLOAD_ID`` and ``PORT``."""
    env = {k: os.environ[k] for k in INHERITED_ENV if k in os.environ}
    env.update(spec.env)
    env["CLOUDLET_WORKLOAD_ID"] = spec.workload_id
    if spec.port is not None:
        env["PORT"] = str(spec.port)
    return env


def validate(spec: WorkloadSpec) -> None:
    """Reject a spec the driver could not run, before anything is written.

    Raises:
        DriverError: bad id, empty command, malformed env or port, or ``command[0]``
            neither an absolute path to an executable nor a name on the child's PATH.
    """
    workload_id = spec.workload_id
    if not valid_id(workload_id):
        raise DriverError(
            f"invalid workload id {workload_id!r}: use 1-128 letters, digits, '.', '_' or '-',"
            " starting with a letter or digit"
        )
    if not spec.command or not all(isinstance(a, str) and "\0" not in a for a in spec.command):
        raise DriverError(f"workload {workload_id!r} needs a command (a tuple of strings)")
    for key, value in spec.env.items():
        if not (isinstance(key, str) and isinstance(value, str)) or not key or "=" in key:
            raise DriverError(f"workload {workload_id!r}: bad environment entry {key!r}")
        if "\0" in key or "\0" in value:
            raise DriverError(f"workload {workload_id!r}: NUL byte in environment entry {key!r}")
    if spec.port is not None and not (isinstance(spec.port, int) and 0 < spec.port < 65536):
        raise DriverError(f"workload {workload_id!r}: bad port {spec.port!r}")
    program = spec.command[0]
    if "/" in program:
        if not os.path.isabs(program):
            raise DriverError(
                f"workload {workload_id!r}: command {program!r} must be an absolute path"
                " or a name on PATH"
            )
        found = os.path.isfile(program) and os.access(program, os.X_OK)
    else:
        found = shutil.which(program, path=child_env(spec).get("PATH", os.defpath)) is not None
    if not found:
        raise DriverError(f"workload {workload_id!r}: command {program!r} not found")


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
