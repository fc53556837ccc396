"""A VM app through the whole system: base and overlay uploaded to a real controller,
an instance created there, the site's agent fetching, synthesizing and booting (or, from
a resumable overlay, resuming) it on QEMU, and the page served from inside the VM
through the reported endpoint."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from cloudlet.synthesis import create_overlay, overlay_info
from cloudlet.testbed.guest import GuestImage, with_page
from cloudlet.testbed.local import LocalAgent, LocalController, wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.qemu,
    pytest.mark.skipif(
        shutil.which("qemu-system-x86_64") is None,
        reason="qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)",
    ),
]

PAGE = "fire-watch, rebuilt at the edge from base + overlay\n"


def upload(api: httpx.Client, path: Path, kind: str, name: str) -> dict[str, object]:
    size = path.stat().st_size
    up = api.post("/v1/uploads", json={"kind": kind, "name": name, "size": size})
    assert up.status_code == 201, up.text
    response = api.put(
        f"/v1/uploads/{up.json()['id']}",
        params={"offset": 0},
        content=path.read_bytes(),
        headers={"content-type": "application/octet-stream"},
    )
    response.raise_for_status()
    done = api.post(f"/v1/uploads/{up.json()['id']}/complete")
    assert done.status_code == 201, done.text
    return done.json()


def cloudlet(*args: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cloudlet.cli", *args], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr


def resumable_overlay(guest: GuestImage, modified: Path, overlay: Path) -> Path:
    """What an app developer does: boot the app VM, capture it once it serves, make a
    resumable overlay of its disk, RAM and device state. Returns the RAM file."""
    ram = overlay.with_suffix(".ram")
    env = guest.vm_env()
    cloudlet(
        "overlay", "capture", "--disk", str(modified), "-o", str(ram), "--memory", "256",
        "--guest-port", str(guest.guest_port), "--accel", "tcg",
        "--kernel", env["CLOUDLET_VM_KERNEL"], "--initrd", env["CLOUDLET_VM_INITRD"],
        "--append", env["CLOUDLET_VM_APPEND"],
    )  # fmt: skip
    cloudlet(
        "overlay", "create", "--base", str(guest.disk), "--modified", str(modified),
        "-o", str(overlay), "--memory", str(ram), "--device-state", f"{ram}.vmstate",
        "--threads", "2", "--quiet",
    )  # fmt: skip
    assert overlay_info(overlay)["resumable"]
    return ram


@pytest.mark.parametrize("resumable", [False, True], ids=["boot", "resume"])
def test_vm_app_from_uploaded_overlay_serves_its_page(
    guest: GuestImage, tmp_path: Path, resumable: bool
) -> None:
    base = guest.disk
    modified = with_page(guest, tmp_path / "modified.img", PAGE)
    overlay = tmp_path / "fire-watch.ovl"
    ram = None
    if resumable:
        ram = resumable_overlay(guest, modified, overlay)
    else:
        create_overlay(base, modified, overlay, threads=2)

    ctl = LocalController(tmp_path / "ctl").start()
    api = ctl.client()
    agent = None
    try:
        token = api.post("/v1/sites", json={"name": "lyon"}).json()["join_token"]["token"]
        agent = LocalAgent(
            "lyon", tmp_path / "lyon", ctl.url, join_token=token,
            env={"CLOUDLET_AGENT__ANNOUNCE": "false"},
        ).start()  # fmt: skip
        image = upload(api, base, "image", "tiny-guest")
        ovl = upload(api, overlay, "overlay", "fire-watch")
        assert ovl["base"] == image["digest"]
        app = {
            "name": "fire-watch",
            "components": [
                {
                    "kind": "vm",
                    "image": image["digest"],
                    "overlay": ovl["id"],
                    "guest_port": guest.guest_port,
                    "env": guest.vm_env(),
                }
            ],
            "resources": {"vcpus": 1, "memory_mib": 256, "disk_gib": 0.1},
            "latency_bound_ms": 20,
        }
        assert api.post("/v1/apps", json=app).status_code == 201
        wait_for(lambda: api.get("/v1/sites/lyon").json()["capacity"], 30, "agent report")
        created = api.post("/v1/instances", json={"app": "fire-watch", "site": "lyon"})
        assert created.status_code == 201, created.text

        def running() -> dict[str, object] | None:
            item = api.get(f"/v1/instances/{created.json()['id']}").json()
            assert item["actual_state"] != "failed", item
            return item if item["actual_state"] == "running" else None

        item = wait_for(running, 180, f"the VM instance running\n{agent.proc.log_tail()}")
        page = httpx.get(f"http://{item['endpoint']}/", timeout=10)
        assert page.text == PAGE
        assert {"fetch", "synthesize", "boot_or_resume", "first_answer"} <= set(item["timings"])
        served = httpx.get(f"http://{item['endpoint']}/token", timeout=10).text.strip()
        if ram is not None:
            # A boot would have made a fresh random token; this one was in the captured RAM.
            assert len(served) == 36 and served.encode() in ram.read_bytes()
        site_vms = tmp_path / "lyon" / "vms" / created.json()["id"]
        assert not list(site_vms.glob("*.ram*"))  # resumed once, then dropped
    finally:
        if agent is not None:
            agent.stop()
        ctl.stop()
        api.close()
