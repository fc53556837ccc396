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
from mobility_fleet import BOUND_MS, SITES, fleet, upload

from cloudlet.compute import WorkloadSpec, WorkloadState
from cloudlet.compute.ports import free_port
from cloudlet.compute.qemu import QemuDriver, device_state_of
from cloudlet.compute.qemu.handoff import (
    _HEADER,
    HandoffError,
    LiveSource,
    finish_source,
    receive_live,
    send_live,
)
from cloudlet.compute.qemu.snapshot import capture
from cloudlet.synthesis import create_overlay
from cloudlet.testbed.guest import GuestImage, with_page
from cloudlet.testbed.local import wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.qemu,
    pytest.mark.skipif(
        shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86_64 is not installed"
    ),
]
MIB = 256
PAGE = "served from inside a VM that moves\n"


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


def test_a_vm_instance_follows_its_client_between_real_agents(
    guest: GuestImage, tmp_path: Path
) -> None:
    overlay = tmp_path / "app.ovl"
    create_overlay(guest.disk, with_page(guest, tmp_path / "app.img", PAGE), overlay, threads=2)
    with fleet(tmp_path, ["lyon", "paris"]) as f:
        image = upload(f.api, guest.disk, "image", "tiny-guest")
        ovl = upload(f.api, overlay, "overlay", "app")
        app = {
            "name": "vm-app",
            "components": [
                {
                    "kind": "vm",
                    "image": image["digest"],
                    "overlay": ovl["id"],
                    "guest_port": guest.guest_port,
                    "env": guest.vm_env(),
                }
            ],
            "resources": {"vcpus": 1, "memory_mib": MIB, "disk_gib": 0.1},
            "latency_bound_ms": BOUND_MS,
        }
        f.api.post("/v1/apps", json=app).raise_for_status()
        lat, lon = SITES["lyon"]
        created = f.api.post(
            "/v1/instances",
            json={"app": "vm-app", "client_latitude": lat, "client_longitude": lon,
                  "follow_client": True},
        )  # fmt: skip
        assert created.status_code == 201, created.text
        item = f.wait_running_at(created.json()["id"], "lyon", timeout=240)
        token = _token(item["endpoint"])
        assert httpx.get(f"http://{item['endpoint']}/", timeout=5).text == PAGE

        plat, plon = SITES["paris"]
        f.api.put(
            f"/v1/instances/{item['id']}/client", json={"latitude": plat, "longitude": plon}
        ).raise_for_status()
        moved = f.wait_running_at(item["id"], "paris", timeout=240)
        assert moved["epoch"] == 1
        # The same guest runs on at paris: no reboot, its RAM-only token came along.
        assert _token(moved["endpoint"]) == token
        (handoff,) = f.api.get("/v1/handoffs", params={"instance": item["id"]}).json()
        assert handoff["kind"] == "vm" and handoff["phase"] == "done"
        assert 0 < handoff["bytes"] < MIB * 1024 * 1024
        assert {"ready", "transferred", "done"} <= set(handoff["phases"])
        sent = wait_for(lambda: f.site_events("lyon", "handoff"), 30, "lyon's handoff event")
        assert sent[0]["data"]["phase"] == "sent" and sent[0]["data"]["downtime_s"] > 0
        assert len(sent[0]["data"]["rounds"]) >= 2
        wait_for(
            lambda: not list((tmp_path / "lyon" / "vms").glob(f"{item['id']}*")),
            30,
            "lyon's copy removed",
        )


def test_killing_the_destination_agent_mid_handoff_leaves_the_vm_at_the_source(
    guest: GuestImage, tmp_path: Path
) -> None:
    with fleet(tmp_path, ["lyon", "paris"]) as f:
        image = upload(f.api, guest.disk, "image", "tiny-guest")
        app = {
            "name": "vm-app",
            "components": [
                {"kind": "vm", "image": image["digest"], "guest_port": guest.guest_port,
                 "env": guest.vm_env()}
            ],
            "resources": {"vcpus": 1, "memory_mib": MIB, "disk_gib": 0.1},
        }  # fmt: skip
        f.api.post("/v1/apps", json=app).raise_for_status()
        created = f.api.post("/v1/instances", json={"app": "vm-app", "site": "lyon"}).json()
        item = f.wait_running_at(created["id"], "lyon", timeout=240)
        token = _token(item["endpoint"])
        move = f.api.post(f"/v1/instances/{item['id']}/move", json={"to": "paris"})
        assert move.status_code == 202, move.text

        def ready() -> bool:
            (h,) = f.api.get("/v1/handoffs").json()
            return h["phase"] in ("ready", "transferred", "done", "failed")

        wait_for(ready, 120, "paris listening for the VM")
        f.agents["paris"].proc.kill()  # the destination dies with the transfer under way
        failed = wait_for(
            lambda: [h for h in f.api.get("/v1/handoffs").json() if h["phase"] == "failed"],
            120,
            "the handoff given up",
        )
        assert failed[0]["destination"] == "paris"
        assert "runs on at the source" in failed[0]["reason"]
        # The same guest runs on at lyon (no reboot: the RAM-only token is unchanged).
        back = f.wait_running_at(item["id"], "lyon", timeout=60)
        assert back["epoch"] == 0 and back["endpoint"] == item["endpoint"]
        assert _token(back["endpoint"]) == token


def _capture(guest: GuestImage, disk: Path, ram: Path) -> Path:
    spec = WorkloadSpec(
        ram.stem, guest_port=guest.guest_port, memory_mib=MIB, disk_image=disk,
        env=guest.vm_env(),
    )  # fmt: skip
    capture(spec, ram, accel="tcg", timeout=120)
    return ram


def test_a_resumed_vm_moves_diffed_against_the_base_ram_both_sites_hold(
    guest: GuestImage, tmp_path: Path
) -> None:
    # The developer's way: the base VM's RAM once it serves, then the app VM's, and a
    # resumable overlay of the app made against the base (disk and RAM).
    shutil.copyfile(guest.disk, tmp_path / "base-run.img")
    base_ram = _capture(guest, tmp_path / "base-run.img", tmp_path / "base.ram")
    modified = with_page(guest, tmp_path / "app.img", PAGE)
    ram = _capture(guest, modified, tmp_path / "app.ram")
    overlay = tmp_path / "app.ovl"
    create_overlay(
        guest.disk, modified, overlay, memory=ram, memory_base=base_ram,
        device_state=device_state_of(ram), threads=2,
    )  # fmt: skip
    with fleet(tmp_path, ["lyon", "paris"]) as f:
        image = upload(f.api, guest.disk, "image", "tiny-guest")
        ram_image = upload(f.api, base_ram, "image", "tiny-guest-ram")
        ovl = upload(f.api, overlay, "overlay", "app")
        assert ovl["resumable"] and ovl["memory_base"] == ram_image["digest"]
        app = {
            "name": "vm-app",
            "components": [
                {"kind": "vm", "image": image["digest"], "overlay": ovl["id"],
                 "guest_port": guest.guest_port, "env": guest.vm_env()}
            ],
            "resources": {"vcpus": 1, "memory_mib": MIB, "disk_gib": 0.1},
        }  # fmt: skip
        f.api.post("/v1/apps", json=app).raise_for_status()
        created = f.api.post("/v1/instances", json={"app": "vm-app", "site": "lyon"}).json()
        item = f.wait_running_at(created["id"], "lyon", timeout=240)
        token = _token(item["endpoint"])
        assert token.encode() in ram.read_bytes()  # resumed, not booted
        move = f.api.post(f"/v1/instances/{item['id']}/move", json={"to": "paris"})
        assert move.status_code == 202, move.text
        moved = f.wait_running_at(item["id"], "paris", timeout=240)
        # The RAM came out right at paris, rebuilt on the base RAM it fetched for it...
        assert _token(moved["endpoint"]) == token
        # ... and lyon sent only what differs from that base RAM, not from zeros.
        sent = wait_for(lambda: f.site_events("lyon", "handoff"), 30, "lyon's handoff event")
        assert sent[0]["data"]["memory_base"] == ram_image["digest"]
