"""Compute drivers: one contract, several backends (process, qemu, fake).

Drivers are looked up by name in :data:`DRIVERS`; :func:`get_driver` builds one::

    driver = get_driver("process", state_dir=Path("/var/lib/cloudlet/workloads"))

Drivers in ``_LAZY_DRIVERS`` (qemu) are imported only when asked for, so importing this
package never needs their backend.
"""

from __future__ import annotations

import importlib
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

#: Drivers imported on first use, by name: (module, class).
_LAZY_DRIVERS: dict[str, tuple[str, str]] = {
    "qemu": ("cloudlet.compute.qemu", "QemuDriver"),
}


def get_driver(name: str, **kwargs: Any) -> ComputeDriver:
    """Build the driver registered as ``name``, passing ``kwargs`` to its constructor.

    Raises:
        DriverUnavailableError: no driver has that name, or its backend is missing here.
    """
    cls = DRIVERS.get(name)
    if cls is None and name in _LAZY_DRIVERS:
        module, attr = _LAZY_DRIVERS[name]
        cls = getattr(importlib.import_module(module), attr)
    if cls is None:
        known = ", ".join(sorted({*DRIVERS, *_LAZY_DRIVERS}))
        raise DriverUnavailableError(f"no compute driver {name!r} (known: {known})")
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
