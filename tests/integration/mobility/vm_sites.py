"""Two in-process QEMU drivers standing for two sites, and the tests' tiny guest booted
at one of them: what the engine-level handoff and checkpoint tests share."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloudlet.compute import WorkloadSpec
from cloudlet.compute.ports import free_port
from cloudlet.compute.qemu import QemuDriver
from cloudlet.testbed.guest import GuestImage
from cloudlet.testbed.local import wait_for

#: The marks of a test that boots QEMU guests.
QEMU_MARKS = [
    pytest.mark.integration,
    pytest.mark.qemu,
    pytest.mark.skipif(
        shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86_64 is not installed"
    ),
]
#: The guest's RAM, in MiB.
MIB = 256


def guest_token(endpoint: str) -> str:
    """The token the guest holds only in its RAM."""
    return httpx.get(f"http://{endpoint}/token", timeout=5).text.strip()


@contextmanager
def two_drivers(root: Path) -> Iterator[dict[str, QemuDriver]]:
    options: dict[str, Any] = {"stop_timeout": 10.0, "poll_interval": 0.05}
    src = QemuDriver(root / "src", **options)
    dst = QemuDriver(root / "dst", **options)
    try:
        yield {"src": src, "dst": dst}
    finally:
        src.close()
        dst.close()


def boot(guest: GuestImage, tmp_path: Path, driver: QemuDriver) -> tuple[WorkloadSpec, str, str]:
    """Run the guest as workload ``vm`` of ``driver``: its spec, endpoint and token."""
    disk = tmp_path / "src-disk.img"
    shutil.copyfile(guest.disk, disk)
    spec = WorkloadSpec(
        "vm", port=free_port(), guest_port=guest.guest_port, memory_mib=MIB, disk_image=disk,
        env=guest.vm_env(),
    )  # fmt: skip
    driver.create(spec)
    endpoint = driver.start("vm").endpoint or ""
    token = wait_for(lambda: guest_token(endpoint), 120, "the guest's service")
    return spec, endpoint, token
