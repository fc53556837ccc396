"""Capture a running app VM as the three files of a resumable overlay.

An app developer boots the customized VM once, lets its service come up, and suspends
it: the disk as it is then, the guest RAM file and QEMU's device state are what
``cloudlet overlay create --modified DISK --memory RAM --device-state VMSTATE`` takes.
A site that synthesizes the overlay resumes the VM with its service already listening.

The VM must be started the way sites will resume it: by the qemu driver, with the
same memory size, vCPUs and kernel options (``CLOUDLET_VM_*``), since QEMU only loads
device state into the same machine.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from cloudlet.compute.base import WorkloadSpec, WorkloadState
from cloudlet.compute.ports import free_port
from cloudlet.compute.qemu._config import MEMORY_FILE, VMSTATE_FILE, device_state_of
from cloudlet.compute.qemu._driver import QemuDriver
from cloudlet.errors import DriverError


@dataclass(frozen=True)
class Snapshot:
    """A suspended VM: its disk, its RAM file and the device state beside it."""

    disk: Path
    memory: Path
    device_state: Path


def http_answers(endpoint: str) -> bool:
    """Whether anything answers an HTTP GET on ``http://endpoint/``."""
    try:
        httpx.get(f"http://{endpoint}/", timeout=2.0, trust_env=False)
    except httpx.HTTPError:
        return False
    return True


def capture(
    spec: WorkloadSpec,
    memory_out: Path,
    *,
    ready: Callable[[str], bool] = http_answers,
    console_marker: str | None = None,
    settle_s: float = 0.0,
    timeout: float = 300.0,
    accel: str = "auto",
) -> Snapshot:
    """Boot ``spec`` (its ``disk_image`` is changed in place; a free port is taken if
    it names none), wait until
    ``ready(endpoint)`` (or, with ``console_marker``, until the serial console shows
    that text: for a base VM that serves nothing) and ``settle_s`` more seconds, suspend
    it, and keep its RAM as ``memory_out`` with the device state beside it
    (``<memory_out>.vmstate``).

    Raises:
        DriverError: QEMU failed, the VM did not get ready within ``timeout`` seconds
            (nothing is kept then), or the files could not be moved.
    """
    if spec.disk_image is None:
        raise DriverError("capturing a VM needs a disk image")
    if spec.port is None:
        spec = dataclasses.replace(spec, port=free_port())
    with tempfile.TemporaryDirectory(prefix="cloudlet-capture-", dir=memory_out.parent) as tmp:
        driver = QemuDriver(Path(tmp), accel=accel, boot_timeout=60.0, stop_timeout=5.0)
        try:
            wid = spec.workload_id
            driver.create(dataclasses.replace(spec, memory_image=None))
            endpoint = driver.start(wid).endpoint or ""
            deadline = time.monotonic() + timeout
            while not (console_marker in driver.log(wid) if console_marker else ready(endpoint)):
                if driver.status(wid).state is not WorkloadState.RUNNING:
                    raise DriverError(f"the VM stopped before it was ready: {driver.log(wid)}")
                if time.monotonic() > deadline:
                    raise DriverError(f"the VM was not ready within {timeout:g}s")
                time.sleep(0.2)
            time.sleep(settle_s)
            driver.suspend(wid)
            saved = Path(tmp) / wid
            shutil.move(saved / MEMORY_FILE, memory_out)
            shutil.move(saved / VMSTATE_FILE, device_state_of(memory_out))
        finally:
            driver.close()
    return Snapshot(spec.disk_image, memory_out, device_state_of(memory_out))


__all__ = ["Snapshot", "capture", "http_answers"]
