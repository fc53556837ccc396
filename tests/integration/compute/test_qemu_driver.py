"""QemuDriver against real QEMU: a tiny Linux guest served through the port forward,
suspend/resume that keeps guest RAM, power-off, restarts, adoption, failures.

Runs under software emulation when KVM does not work; a boot then takes seconds, so
the tests boot the real guest only where a test needs a guest, and a spinning
boot sector where QEMU merely has to run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from compute_helpers import free_port, gone, http_get, wait_for

from cloudlet.compute import RestartPolicy, WorkloadSpec, WorkloadState, get_driver
from cloudlet.compute.qemu import QemuDriver
from cloudlet.errors import DriverError, DriverUnavailableError
from cloudlet.testbed.guest import GuestImage

QEMU = shutil.which("qemu-system-x86_64")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.qemu,
    pytest.mark.skipif(
        QEMU is None,
        reason="qemu-system-x86_64 is not installed"
        " (apt-get install -y --no-install-recommends qemu-system-x86 qemu-utils)",
    ),
]

#: Under TCG on a slow host a boot takes 5-20 s; this only bounds a hung one.
BOOT_WAIT = 90.0
#: cli; hlt; jmp back -- a "guest" that idles forever right after the BIOS.
IDLE_BOOT_SECTOR = bytes([0xFA, 0xF4, 0xEB, 0xFD]) + bytes(506) + b"\x55\xaa"


@pytest.fixture
def make_driver(tmp_path: Path) -> Iterator[Callable[..., QemuDriver]]:
    """Build drivers on one state dir; whatever a test leaves running is stopped after it."""
    made: list[QemuDriver] = []

    def make(**kwargs: Any) -> QemuDriver:
        options = {"stop_timeout": 20.0, "poll_interval": 0.05, "restart_backoff": 0.05}
        made.append(QemuDriver(tmp_path / "state", **{**options, **kwargs}))
        return made[-1]

    yield make
    for d in made:
        d.close()
    leftovers = qemu_processes(tmp_path)
    for proc in leftovers:
        proc.kill()
    assert not leftovers, "a test left QEMU running"


def qemu_processes(under: Path) -> list[psutil.Process]:
    """Live QEMU processes whose command line mentions ``under`` (zombies do not count)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["status"] == psutil.STATUS_ZOMBIE or not cmdline:
            continue
        if "qemu-system" in cmdline[0] and any(str(under) in arg for arg in cmdline):
            found.append(proc)
    return found


def guest_spec(guest: GuestImage, tmp_path: Path, workload_id: str, **kwargs: Any) -> WorkloadSpec:
    disk = tmp_path / f"{workload_id}.img"
    shutil.copyfile(guest.disk, disk)
    return WorkloadSpec(
        workload_id,
        port=free_port(),
        guest_port=guest.guest_port,
        memory_mib=256,
        disk_image=disk,
        env=guest.vm_env(),
        **kwargs,
    )


def idle_spec(tmp_path: Path, workload_id: str, **kwargs: Any) -> WorkloadSpec:
    disk = tmp_path / f"{workload_id}.img"
    disk.write_bytes(IDLE_BOOT_SECTOR)
    return WorkloadSpec(workload_id, disk_image=disk, **{"memory_mib": 32, **kwargs})


@contextlib.contextmanager
def busy_port() -> Iterator[int]:
    """A TCP port on 127.0.0.1 held busy for the duration of a ``with`` block."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def digest(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def fetch(endpoint: str, path: str = "") -> str:
    return wait_for(lambda: http_get(f"http://{endpoint}/{path}"), f"{endpoint}/{path}", BOOT_WAIT)


def test_guest_serves_its_page_and_suspend_resume_keeps_its_ram(
    make_driver: Callable[..., QemuDriver], guest: GuestImage, tmp_path: Path
) -> None:
    driver = make_driver()
    driver.create(guest_spec(guest, tmp_path, "web"))
    started = driver.start("web")
    assert started.state is WorkloadState.RUNNING
    assert started.endpoint is not None
    assert fetch(started.endpoint) == guest.page
    token = fetch(started.endpoint, "token").strip()
    assert token

    driver.suspend("web")
    suspended = driver.status("web")
    assert (suspended.state, suspended.pid, suspended.endpoint) == (
        WorkloadState.SUSPENDED,
        None,
        None,
    )
    assert gone(started.pid)
    assert qemu_processes(tmp_path) == []
    workload_dir = tmp_path / "state" / "web"
    assert (workload_dir / "memory.ram").stat().st_size == 256 * 1024 * 1024
    assert (workload_dir / "vmstate").stat().st_size > 0
    driver.suspend("web")  # suspending a suspended workload succeeds

    resumed = driver.resume("web")
    assert resumed.state is WorkloadState.RUNNING
    assert resumed.pid != started.pid
    # A reboot would have written a new token; the same one means the same RAM ran on.
    assert fetch(resumed.endpoint or "", "token").strip() == token
    assert "cloudlet-guest: ready" in driver.log("web")

    driver.delete("web")
    assert gone(resumed.pid)
    assert qemu_processes(tmp_path) == []
    assert not workload_dir.exists()
    assert (tmp_path / "web.img").exists()  # the disk image is the caller's


def test_a_vm_starts_from_a_saved_memory_image(
    make_driver: Callable[..., QemuDriver], guest: GuestImage, tmp_path: Path
) -> None:
    driver = make_driver()
    original = guest_spec(guest, tmp_path, "original")
    driver.create(original)
    token = fetch(driver.start("original").endpoint or "", "token").strip()
    driver.suspend("original")
    # What synthesis will hand over: a disk, a RAM image and the device state beside it.
    saved = tmp_path / "state" / "original"
    disk, memory = tmp_path / "app.img", tmp_path / "app.ram"
    shutil.copyfile(original.disk_image or "", disk)
    shutil.copyfile(saved / "memory.ram", memory)
    shutil.copyfile(saved / "vmstate", tmp_path / "app.ram.vmstate")
    driver.delete("original")

    spec = dataclasses.replace(
        original, workload_id="clone", port=free_port(), disk_image=disk, memory_image=memory
    )
    driver.create(spec)
    assert driver.status("clone").state is WorkloadState.CREATED
    # create() took its own link to the image: the caller's files may go.
    memory.unlink()
    (tmp_path / "app.ram.vmstate").unlink()
    first = driver.start("clone")
    assert fetch(first.endpoint or "", "token").strip() == token  # no boot: the same RAM
    driver.stop("clone")
    # The disk has moved on since the image was saved: later starts boot from it.
    again = driver.start("clone")
    assert fetch(again.endpoint or "", "token").strip() != token
    driver.delete("clone")


def test_stop_powers_the_guest_off_and_start_boots_afresh(
    make_driver: Callable[..., QemuDriver], guest: GuestImage, tmp_path: Path
) -> None:
    driver = make_driver()
    spec = guest_spec(guest, tmp_path, "web")
    qcow2 = tmp_path / "web.qcow2"  # the same disk as qcow2, to attach that format too
    subprocess.run(
        ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(spec.disk_image), str(qcow2)],
        check=True,
    )
    spec = dataclasses.replace(spec, disk_image=qcow2)
    driver.create(spec)
    first = driver.start("web")
    token = fetch(first.endpoint or "", "token").strip()

    driver.stop("web")
    stopped = driver.status("web")
    # Exit code 0: the guest powered off on the ACPI button, QEMU was not killed.
    assert (stopped.state, stopped.pid, stopped.exit_code) == (WorkloadState.STOPPED, None, 0)
    assert gone(first.pid)
    assert "Power down" in driver.log("web")

    again = driver.start("web")
    assert fetch(again.endpoint or "", "token").strip() != token
    driver.stop("web")


def test_a_new_driver_adopts_a_running_vm(
    make_driver: Callable[..., QemuDriver], tmp_path: Path
) -> None:
    driver = make_driver(stop_timeout=1.0)
    driver.create(idle_spec(tmp_path, "idle"))
    pid = driver.start("idle").pid
    driver.close(keep_running=True)
    assert not gone(pid)

    after = make_driver(stop_timeout=1.0)
    assert after.list() == ["idle"]
    assert (after.status("idle").state, after.status("idle").pid) == (WorkloadState.RUNNING, pid)
    assert after.start("idle").pid == pid  # no second QEMU
    after.stop("idle")  # the idle guest ignores ACPI: quit after the timeout
    assert after.status("idle").state is WorkloadState.STOPPED
    assert gone(pid)


def test_one_driver_at_a_time_holds_a_state_dir(
    make_driver: Callable[..., QemuDriver], tmp_path: Path
) -> None:
    driver = make_driver(stop_timeout=1.0)
    driver.create(idle_spec(tmp_path, "idle"))
    pid = driver.start("idle").pid
    # A second driver would supervise (and restart) the same QEMU: refused.
    with pytest.raises(DriverError, match="in use by another qemu driver"):
        QemuDriver(tmp_path / "state")
    assert driver.status("idle").pid == pid
    driver.close(keep_running=True)
    after = make_driver(stop_timeout=1.0)  # the lock went with the first driver
    assert after.status("idle").pid == pid
    after.stop("idle")


def test_a_suspended_vm_survives_the_agent_and_an_interrupted_suspend_is_settled(
    make_driver: Callable[..., QemuDriver], tmp_path: Path
) -> None:
    driver = make_driver(stop_timeout=1.0)
    driver.create(idle_spec(tmp_path, "idle"))
    pid = driver.start("idle").pid
    driver.suspend("idle")
    driver.close()
    # As if the agent died after the state was saved but before the record said so.
    state_file = tmp_path / "state" / "idle" / "state.json"
    record = json.loads(state_file.read_text())
    state_file.write_text(json.dumps({**record, "state": "running", "pid": pid}))

    after = make_driver(stop_timeout=1.0)
    assert after.status("idle").state is WorkloadState.SUSPENDED
    resumed = after.start("idle")  # start() of a suspended VM resumes it
    assert resumed.state is WorkloadState.RUNNING
    assert "resumed" in (resumed.reason or "")
    assert not (tmp_path / "state" / "idle" / "vmstate").exists()
    after.stop("idle")
    assert after.status("idle").state is WorkloadState.STOPPED


def test_a_crashed_qemu_is_restarted_by_policy(
    make_driver: Callable[..., QemuDriver], tmp_path: Path
) -> None:
    driver = make_driver(stop_timeout=1.0)
    driver.create(idle_spec(tmp_path, "idle", restart=RestartPolicy.ON_FAILURE))
    pid = driver.start("idle").pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    status = wait_for(
        lambda: (s := driver.status("idle")).restarts == 1 and s.pid is not None and s,
        "a restarted QEMU",
    )
    assert status.state is WorkloadState.RUNNING
    assert status.pid != pid
    assert "restart 1 of 5" in (status.reason or "")
    driver.delete("idle")
    assert gone(status.pid)


def test_failed_creates_leave_nothing(
    make_driver: Callable[..., QemuDriver], tmp_path: Path
) -> None:
    driver = make_driver()
    bad = [
        WorkloadSpec("w1"),  # nothing to boot
        WorkloadSpec("w1", env={"CLOUDLET_VM_KERNEL": str(tmp_path / "missing")}),
        idle_spec(tmp_path, "w1", env={"CLOUDLET_VM_KERNAL": "/boot/vmlinuz"}),
        idle_spec(tmp_path, "w1", memory_mib=0),
        WorkloadSpec("../w1", disk_image=tmp_path / "w1.img"),
    ]
    for spec in bad:
        with pytest.raises(DriverError):
            driver.create(spec)
    assert driver.list() == []
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == [".lock"]


def test_a_start_that_fails_says_why_and_leaves_no_qemu(
    make_driver: Callable[..., QemuDriver], tmp_path: Path
) -> None:
    driver = make_driver()
    with busy_port() as port:
        driver.create(idle_spec(tmp_path, "idle", port=port, guest_port=80))
        with pytest.raises(DriverError, match="host forwarding"):
            driver.start("idle")
    status = driver.status("idle")
    assert status.state is WorkloadState.CREATED
    assert "host forwarding" in (status.reason or "")
    assert qemu_processes(tmp_path) == []


def test_suspend_needs_a_running_vm(make_driver: Callable[..., QemuDriver], tmp_path: Path) -> None:
    driver = make_driver()
    driver.create(idle_spec(tmp_path, "idle"))
    with pytest.raises(DriverError, match="not running"):
        driver.suspend("idle")
    with pytest.raises(DriverError, match="not suspended"):
        driver.resume("idle")


def test_registry_builds_it_and_a_missing_qemu_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    driver = get_driver("qemu", state_dir=tmp_path / "state", accel="tcg")
    assert isinstance(driver, QemuDriver)
    driver.close()
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DriverUnavailableError, match="apt-get install"):
        QemuDriver(tmp_path / "state")
