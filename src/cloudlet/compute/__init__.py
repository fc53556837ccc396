"""Compute drivers: one contract, several backends (process, qemu, fake)."""

from __future__ import annotations

from cloudlet.compute.base import (
    ComputeDriver,
    RestartPolicy,
    WorkloadSpec,
    WorkloadState,
    WorkloadStatus,
)

__all__ = [
    "ComputeDriver",
    "RestartPolicy",
    "WorkloadSpec",
    "WorkloadState",
    "WorkloadStatus",
]
