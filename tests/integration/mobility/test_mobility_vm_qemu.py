"""Live VM handoff under real QEMU (the tests' tiny guest, TCG where KVM is missing):
the guest's token, held only in its RAM, survives the move; a destination that dies
mid-transfer leaves the VM running at the source."""

from __future__ import annotations

import dataclasses
import shutil
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloudlet.compute import WorkloadSpec, WorkloadState
from cloudlet.compute.ports import free_port
from cloudlet.compute.qemu import QemuDriver
from cloudlet.compute.qemu.handoff import (
    _HEADER,
    HandoffError,
    LiveSource,
    finish_source,
    receive_live,
    send_live,
)
from cloudlet.testbed.guest import GuestImage
from cloudlet.testbed.local import wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.qemu,
    pytest.mark.skipif(
        shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86_64 is not installed"
    ),
]
MIB = 256


def _token(endpoint: str) -> str:
    return httpx.get(f"http://{endpoint}/token", timeout=5).text.strip()


@pytest.fixture
def sites(tmp_path: Path) -> Iterator[dict[str, Any]]:
    options: dict[str, Any] = {"stop_timeout": 10.0, "poll_interval": 0.05}
    src = QemuDriver(tmp_path / "src", **options)
    dst = QemuDriver(tmp_path / "dst", **options)
    try:
        yield {"src": src, "dst": dst}
    finally:
        src.close()
        dst.close()


def _boot(guest: GuestImage, tmp_path: Path, driver: QemuDriver) -> tuple[WorkloadSpec, str, str]:
    disk = tmp_path / "src-disk.img"
    shutil.copyfile(guest.disk, disk)
    spec = WorkloadSpec(
        "vm", port=free_port(), guest_port=guest.guest_port, memory_mib=MIB, disk_image=disk,
        env=guest.vm_env(),
    )  # fmt: skip
    driver.create(spec)
    endpoint = driver.start("vm").endpoint or ""
    token = wait_for(lambda: _token(endpoint), 120, "the guest's service")
    return spec, endpoint, token


def _listen() -> socket.socket:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    return server


def test_a_running_vm_moves_with_its_ram(
    guest: GuestImage, tmp_path: Path, sites: dict[str, Any]
) -> None:
    src, dst = sites["src"], sites["dst"]
    spec, endpoint, token = _boot(guest, tmp_path, src)
    dest_spec = dataclasses.replace(spec, port=free_port(), disk_image=tmp_path / "dst-disk.img")
    server = _listen()
    result: dict[str, Any] = {}

    def destination() -> None:
        conn, _ = server.accept()
        with conn:
            try:
                result["endpoint"] = receive_live(conn, dst, dest_spec, guest.disk)
            except Exception as exc:
                result["error"] = exc

    thread = threading.Thread(target=destination)
    thread.start()
    with socket.create_connection(server.getsockname()) as sock:
        stats = send_live(LiveSource.of(src, "vm", guest.disk), sock)
    thread.join(60)
    server.close()
    assert "error" not in result, result
    finish_source(src, "vm")
    # The same guest runs on at the destination: the token lives only in its RAM.
    assert _token(result["endpoint"]) == token
    assert dst.status("vm").state is WorkloadState.RUNNING
    assert src.list() == []
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://{endpoint}/token", timeout=2)
    # Only what differs from the base travelled, and less than the guest's RAM.
    assert len(stats.rounds) >= 2 and stats.rounds[-1].get("paused") == 1
    assert 0 < stats.bytes_sent < MIB * 1024 * 1024
    assert stats.device_state_bytes > 0 and 0 < stats.downtime_s < stats.total_s


def _read_frames(conn: socket.socket, until: bytes) -> None:
    """Take frames off the stream (discarding them) up to the first of kind ``until``."""
    while True:
        header = b""
        while len(header) < _HEADER.size:
            header += conn.recv(_HEADER.size - len(header)) or b"!"
        kind, _region, _count, length = _HEADER.unpack(header)
        while length:
            length -= len(conn.recv(min(length, 1 << 20)))
        if kind == until[0]:
            return


@pytest.mark.parametrize("dies", ["during the first round", "with the guest paused"])
def test_a_destination_dying_mid_transfer_leaves_the_vm_at_the_source(
    guest: GuestImage, tmp_path: Path, sites: dict[str, Any], dies: str
) -> None:
    src = sites["src"]
    _spec, endpoint, token = _boot(guest, tmp_path, src)
    server = _listen()

    def dying_destination() -> None:
        conn, _ = server.accept()
        if dies == "during the first round":
            conn.recv(64 * 1024)
        else:  # everything arrived, the source paused its guest: die before resuming
            _read_frames(conn, b"E")
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()

    thread = threading.Thread(target=dying_destination)
    thread.start()
    with socket.create_connection(server.getsockname()) as sock, pytest.raises(HandoffError):
        send_live(LiveSource.of(src, "vm", guest.disk), sock)
    thread.join(10)
    server.close()
    assert src.status("vm").state is WorkloadState.RUNNING
    assert _token(endpoint) == token
