"""What the process driver asks of a WorkloadSpec, and the environment its child gets."""

from __future__ import annotations

import os
import shutil

from cloudlet.compute._records import check_id
from cloudlet.compute.base import WorkloadSpec
from cloudlet.errors import DriverError

#: Variables a child inherits from the agent's environment; everything else it gets
#: from its spec, so a workload never sees the agent's credentials or settings.
INHERITED_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")


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
    check_id(workload_id)
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
