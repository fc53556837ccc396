"""What this host offers (capacity) and how much of it is in use (utilization), via psutil."""

from __future__ import annotations

from pathlib import Path

import psutil

from cloudlet.schemas import Resources, Utilization

_MIB = 1024 * 1024
_GIB = 1024 * _MIB


def _existing(path: Path) -> Path:
    """The nearest existing ancestor: disk figures are those of its filesystem."""
    path = path.resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _fraction(percent: float) -> float:
    return min(1.0, max(0.0, percent / 100.0))


def capacity(data_dir: Path) -> Resources:
    """CPUs, memory, and the size of the filesystem holding ``data_dir``."""
    disk = psutil.disk_usage(str(_existing(data_dir)))
    return Resources(
        vcpus=float(min(1024, psutil.cpu_count() or 1)),
        memory_mib=max(1, psutil.virtual_memory().total // _MIB),
        disk_gib=round(disk.total / _GIB, 2),
    )


def utilization(data_dir: Path) -> Utilization:
    """Fractions in use; CPU is the average since the previous call (non-blocking)."""
    return Utilization(
        cpu=_fraction(psutil.cpu_percent(interval=None)),
        memory=_fraction(psutil.virtual_memory().percent),
        disk=_fraction(psutil.disk_usage(str(_existing(data_dir))).percent),
    )
