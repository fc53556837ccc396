"""VM starts under faults: the agent SIGKILLed in each phase of a VM start (fetching,
synthesizing, starting), and the site's disk full during synthesis. Real QEMU (TCG)."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from partition_bed import Bed

from cloudlet.synthesis import base_digest, create_overlay
from cloudlet.testbed.guest import GuestImage, with_page
from cloudlet.testbed.local import wait_for
from cloudlet.testbed.wan import WanSite

pytestmark = [
    pytest.mark.partition,
    pytest.mark.qemu,
    pytest.mark.skipif(
        shutil.which("qemu-system-x86_64") is None,
        reason="qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)",
    ),
]

PAGE = "a VM rebuilt at the edge, whatever happened on the way\n"
EXTRA = 48 << 20
VM_ENV = {
    "CLOUDLET_AGENT__VM_ACCEL": "tcg",
    "CLOUDLET_AGENT__VM_ANSWER_TIMEOUT_S": "120",
    "CLOUDLET_AGENT__RECONCILE_INTERVAL_S": "0.5",
}


def _upload(api: httpx.Client, path: Path, kind: str, name: str) -> dict[str, Any]:
    up = api.post("/v1/uploads", json={"kind": kind, "name": name, "size": path.stat().st_size})
    assert up.status_code == 201, up.text
    api.put(
        f"/v1/uploads/{up.json()['id']}",
        params={"offset": 0},
        content=path.read_bytes(),
        headers={"content-type": "application/octet-stream"},
    ).raise_for_status()
    done = api.post(f"/v1/uploads/{up.json()['id']}/complete")
    assert done.status_code == 201, done.text
    return done.json()


@pytest.fixture(scope="module")
def vm_app(bed: Bed, guest: GuestImage) -> dict[str, str]:
    """Base and overlay uploaded, and an app of one VM component defined."""
    work = bed.tmp / "vm-app"
    work.mkdir()
    # The guest's disk grown by 48 MiB that the app fills with its own (incompressible)
    # data, past the end of its file system: fetch and synthesis take long enough to
    # be caught in the act, as a real app's would.
    base, modified = work / "base.img", with_page(guest, work / "modified.img", PAGE)
    shutil.copyfile(guest.disk, base)
    grown = base.stat().st_size + EXTRA
    os.truncate(base, grown)
    with modified.open("r+b") as f:
        f.seek(0, os.SEEK_END)
        f.write(os.urandom(EXTRA))
    overlay = work / "app.ovl"
    create_overlay(base, modified, overlay, threads=2)
    image = _upload(bed.api, base, "image", "tiny-guest")
    ovl = _upload(bed.api, overlay, "overlay", "edge-web")
    app = {
        "name": "edge-web",
        "components": [
            {
                "kind": "vm",
                "image": image["digest"],
                "overlay": ovl["id"],
                "guest_port": guest.guest_port,
                "env": guest.vm_env(),
            }
        ],
        "resources": {"vcpus": 1, "memory_mib": 128, "disk_gib": 0.1},
        "latency_bound_ms": 50,
    }
    assert bed.api.post("/v1/apps", json=app).status_code == 201
    return {"image": image["digest"], "overlay": ovl["id"]}


def _qemus(site: WanSite) -> list[psutil.Process]:
    """QEMU processes working for this site (their files live under its data dir)."""
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if "qemu-system" in cmd and str(site.agent.data_dir) in cmd:
            found.append(proc)
    return found


def _wait_phase(site: WanSite, iid: str, phase: str, timeout: float = 120) -> list[str]:
    """Watch the instance's state in the agent's own store (a read every 2 ms: a phase
    can be short) until it is ``phase``; returns the states seen."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    with sqlite3.connect(f"file:{site.agent.data_dir / 'agent.db'}?mode=ro", uri=True) as db:
        while time.monotonic() < deadline:
            row = db.execute("SELECT state FROM actual WHERE id = ?", (iid,)).fetchone()
            if row and (not seen or seen[-1] != row[0]):
                seen.append(row[0])
            if row and row[0] == phase:
                return seen
            if row and row[0] in ("running", "failed"):
                break
            time.sleep(0.002)
    raise AssertionError(f"{iid} never caught in {phase}: {seen}")


def _serve(bed: Bed, site: WanSite, iid: str) -> None:
    inst = bed.wait_local_running(site, [iid], timeout=180)[iid]
    assert httpx.get(f"http://{inst['endpoint']}/", timeout=10).text == PAGE


def _delete(bed: Bed, site: WanSite, iid: str) -> None:
    bed.api.delete(f"/v1/instances/{iid}").raise_for_status()
    wait_for(lambda: iid not in bed.local_states(site), 60, f"instance {iid} gone")


def test_agent_killed_in_every_phase_of_a_vm_start(bed: Bed, vm_app: dict[str, str]) -> None:
    site = bed.site("vmkill", rate_mbit=100, env=VM_ENV)
    seen = {}
    # In this order: only the first start has to fetch (later ones find the cache).
    for phase in ("fetching", "synthesizing", "starting"):
        made = bed.api.post("/v1/instances", json={"app": "edge-web", "site": "vmkill"})
        assert made.status_code == 201, made.text
        iid = made.json()["id"]
        states = _wait_phase(site, iid, phase)
        assert site.agent.proc is not None
        site.agent.proc.kill()
        seen[phase] = states
        site.agent.start()
        _serve(bed, site, iid)  # the page from the overlay: the disk is whole
        wait_for(lambda: len(_qemus(site)) == 1, 30, "one QEMU for the one VM")
        _delete(bed, site, iid)
        wait_for(lambda: not _qemus(site), 30, "no QEMU left")
    # The cache holds the base and the overlay whole, verified by digest.
    cached = next(site.agent.data_dir.rglob(vm_app["image"]))
    assert base_digest(cached).hex() == vm_app["image"]
    print(f"VM kills: states seen before each kill {seen}")


def test_disk_full_during_synthesis(bed: Bed, vm_app: dict[str, str]) -> None:
    site = bed.site("vmfull", rate_mbit=100, env=VM_ENV)
    vms = site.agent.data_dir / "vms"
    vms.mkdir(parents=True, exist_ok=True)
    site.agent.stop()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(vms)], check=True)
    try:
        site.agent.start()
        made = bed.api.post("/v1/instances", json={"app": "edge-web", "site": "vmfull"})
        iid = made.json()["id"]

        def failed() -> dict[str, Any] | None:
            inst = bed.local_states(site).get(iid, {})
            assert inst.get("state") != "running", inst
            return inst if inst.get("state") == "failed" else None

        inst = wait_for(failed, 120, f"{iid} failing on a full disk")
        assert "no space left on device" in (inst["reason"] or "").lower(), inst
        assert not _qemus(site)
        # Nothing half-written stays behind on the full disk; the cache is whole.
        assert sum(f.stat().st_blocks for f in vms.rglob("*") if f.is_file()) == 0
        cached = next(site.agent.data_dir.rglob(vm_app["image"]))
        assert base_digest(cached).hex() == vm_app["image"]
        at_controller = wait_for(
            lambda: (
                (i := bed.api.get(f"/v1/instances/{iid}").json())["actual_state"] == "failed" and i
            ),
            30,
            "the failure reported",
        )
        assert "no space left" in at_controller["reason"].lower()

        # Space freed: the operator starts it again, and it runs from the cache.
        subprocess.run(["mount", "-o", "remount,size=64m", str(vms)], check=True)
        _delete(bed, site, iid)
        again = bed.api.post("/v1/instances", json={"app": "edge-web", "site": "vmfull"})
        _serve(bed, site, again.json()["id"])
        assert bed.wait_local_running(site, [again.json()["id"]])
        _delete(bed, site, again.json()["id"])
    finally:
        site.agent.stop()
        time.sleep(0.2)
        subprocess.run(["umount", "-l", str(vms)], check=False)
