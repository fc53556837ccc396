"""On-disk records of the qemu driver: one directory per workload, JSON written atomically.

Layout of ``state_dir/<workload_id>/``::

    spec.json      the WorkloadSpec, written once by create()
    state.json     runtime record (state, pid, create time, QMP socket, ...), rewritten on change
    console.log    the guest's serial console, appended across boots
    qemu.log       QEMU's own stdout and stderr, plus driver marker lines
    qemu.pid       written by QEMU (-pidfile); the record's pid is what the driver trusts
    memory.ram     the guest's RAM (a shared memory-backend-file), kept across suspend
    vmstate        device state saved by suspend(); present only while SUSPENDED
    qmp.sock       the QMP socket while QEMU runs (elsewhere if this path is too long)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from cloudlet.compute.base import WorkloadState
from cloudlet.compute.process._store import read_json, write_json

SPEC_FILE = "spec.json"
STATE_FILE = "state.json"

__all__ = ["SPEC_FILE", "STATE_FILE", "Runtime", "read_json", "write_json"]


@dataclass
class Runtime:
    """What the driver remembers about a VM between agent restarts."""

    state: WorkloadState = WorkloadState.CREATED
    pid: int | None = None
    create_time: float | None = None  # psutil create_time of ``pid``, to detect pid reuse
    qmp: str | None = None  # the QMP socket of the running QEMU
    accel: str | None = None  # what the running QEMU (or the suspended state) was started with
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
            qmp=data.get("qmp"),
            accel=data.get("accel"),
            restarts=int(data.get("restarts", 0)),
            exit_code=data.get("exit_code"),
            reason=data.get("reason"),
        )
