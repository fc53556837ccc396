"""VM checkpoints under real QEMU (the tests' tiny guest, TCG where KVM is missing): a
checkpoint of a running guest, restored by another driver, resumes the same guest
(its RAM-only token came along) while the source guest ran on after the checkpoint;
and between real agents, a VM fails over from its last checkpoint, not a reboot."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mobility_fleet import fleet, upload
from vm_sites import MIB, QEMU_MARKS, boot, guest_token, two_drivers

from cloudlet.compute import WorkloadState
from cloudlet.compute.ports import free_port
from cloudlet.compute.qemu import QemuDriver, device_state_of
from cloudlet.compute.qemu.checkpoint import (
    MAGIC,
    CheckpointError,
    restore_checkpoint,
    write_checkpoint,
)
from cloudlet.compute.qemu.handoff import LiveSource
from cloudlet.testbed.guest import GuestImage
from cloudlet.testbed.local import wait_for

pytestmark = QEMU_MARKS


@pytest.fixture
def sites(tmp_path: Path) -> Iterator[dict[str, QemuDriver]]:
    with two_drivers(tmp_path) as drivers:
        yield drivers


@pytest.mark.parametrize("ram_base", ["zeros", "a base RAM image"])
def test_a_checkpoint_resumes_the_guest_elsewhere_and_the_source_runs_on(
    guest: GuestImage, tmp_path: Path, sites: dict[str, Any], ram_base: str
) -> None:
    src, dst = sites["src"], sites["dst"]
    spec, endpoint, token = boot(guest, tmp_path, src)

    base_memory = None
    if ram_base != "zeros":
        # What the RAM is diffed against, and rebuilt on: any image both sides hold.
        base_memory = tmp_path / "base.ram"
        with base_memory.open("wb") as f:
            f.write(os.urandom(4 << 20))
            f.truncate(MIB << 20)
    out = tmp_path / "vm.ckpt"
    stats = write_checkpoint(LiveSource.of(src, "vm", guest.disk, base_memory), out)
    print(f"checkpoint: {stats.bytes} bytes, paused {stats.pause_s}s, rounds {stats.rounds}")
    # The source guest runs on: it answers, with the same RAM.
    assert src.status("vm").state is WorkloadState.RUNNING
    assert guest_token(endpoint) == token
    assert out.read_bytes()[: len(MAGIC)] == MAGIC
    assert stats.rounds[-1].get("paused") == 1 and stats.device_state_bytes > 0
    assert 0 < stats.pause_s < stats.total_s
    assert 0 < stats.bytes == out.stat().st_size < MIB * 1024 * 1024

    # Another site rebuilds the VM from the checkpoint and the base, and resumes it.
    dest_disk = tmp_path / "dst" / "disk.img"
    memory = tmp_path / "dst" / "disk.ram"
    restore_checkpoint(out, dest_disk, memory, guest.disk, base_memory, MIB)
    assert device_state_of(memory).is_file()
    dest_spec = dataclasses.replace(
        spec, port=free_port(), disk_image=dest_disk, memory_image=memory
    )
    dst.create(dest_spec)
    status = dst.start("vm")
    assert status.state is WorkloadState.RUNNING, status.reason
    assert wait_for(lambda: guest_token(status.endpoint or ""), 60, "the restored guest") == token
    assert guest_token(endpoint) == token  # both run: fencing is the agents' job, by epoch


def test_a_truncated_checkpoint_restores_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(MAGIC + b"C\x00")
    disk, memory = tmp_path / "d.img", tmp_path / "d.ram"
    with pytest.raises(CheckpointError, match="truncated"):
        restore_checkpoint(bad, disk, memory, None, None, 4)
    assert not disk.exists() and not memory.exists() and not device_state_of(memory).exists()
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a VM checkpoint"):
        restore_checkpoint(bad, disk, memory, None, None, 4)


def test_a_vm_fails_over_from_its_checkpoint_between_real_agents(
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
            "relocatable": True, "failover_after_s": 3, "checkpoint_interval_s": 2,
        }  # fmt: skip
        f.api.post("/v1/apps", json=app).raise_for_status()
        created = f.api.post("/v1/instances", json={"app": "vm-app", "site": "lyon"}).json()
        item = f.wait_running_at(created["id"], "lyon", timeout=240)
        iid, token = item["id"], guest_token(item["endpoint"])
        kept = wait_for(
            lambda: f.api.get(f"/v1/instances/{iid}/checkpoints").json(), 60, "a VM checkpoint"
        )
        assert kept[0]["kind"] == "vm" and kept[0]["pause_s"] > 0 and kept[0]["site"] == "lyon"

        # Lyon is cut off: the VM fails over to paris and resumes there from the
        # checkpoint: the token it drew at boot, held only in RAM, is the same.
        f.links["lyon"].cut()
        moved = f.wait_running_at(iid, "paris", timeout=120)
        assert moved["epoch"] == 1
        assert guest_token(moved["endpoint"]) == token
        restored = wait_for(
            lambda: [
                e for e in f.site_events("paris", "checkpoint") if e["data"]["phase"] == "restored"
            ],
            30,
            "paris's restored event",
        )
        assert restored[0]["data"]["kind"] == "vm"
        # The link returns: lyon's stale copy goes, its checkpoints are refused.
        f.links["lyon"].restore()
        wait_for(lambda: not _serves(item["endpoint"]), 60, "lyon's stale copy stopped")
        assert guest_token(moved["endpoint"]) == token


def _serves(endpoint: str) -> bool:
    try:
        guest_token(endpoint)
    except httpx.HTTPError:
        return False
    return True
