"""Compute drivers: one contract, several backends (process, qemu, fake).

Drivers are looked up by name in :data:`DRIVERS`; :func:`get_driver` builds one::

    driver = get_driver("process", state_dir=Path("/var/lib/cloudlet/workloads"))
"""

from __future__ import annotations

from typing import Any

from cloudlet.compute.base import (
    ComputeDriver,
    RestartPolicy,
    WorkloadSpec,
    WorkloadState,
    WorkloadStatus,
)
from cloudlet.compute.fake import FakeDriver, FakeMachine
from cloudlet.compute.process import ProcessDriver
from cloudlet.errors import DriverUnavailableError

#: Every driver by the name settings use for it.
DRIVERS: dict[str, type[ComputeDriver]] = {
    "fake": FakeDriver,
    "process": ProcessDriver,
}


def get_driver(name: str, **kwargs: Any) -> ComputeDriver:
    """Build the driver registered as ``name``, passing ``kwargs`` to its constructor.

    Raises:
        DriverUnavailableError: no driver has that name.
    """
    try:
        cls = DRIVERS[name]
    except KeyError:
        known = ", ".join(sorted(DRIVERS))
        raise DriverUnavailableError(f"no compute driver {name!r} (known: {known})") from None
    return cls(**kwargs)


__all__ = [
    "DRIVERS",
    "ComputeDriver",
    "FakeDriver",
    "FakeMachine",
    "ProcessDriver",
    "RestartPolicy",
    "WorkloadSpec",
    "WorkloadState",
    "WorkloadStatus",
    "get_driver",
]
