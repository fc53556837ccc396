"""A VM app end to end on real QEMU: base and overlay from a stub blob server, the disk
synthesized at the site, the guest booted with its port forwarded, the modified page
served, every phase timed. The agent's reconciler and VM path run in-process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import subprocess
from pathlib import Path

import httpx
import psutil
import pytest

from cloudlet.agent import actual, desired
from cloudlet.agent._specs import DriverSet
from cloudlet.agent.artifacts import ArtifactCache
from cloudlet.agent.reconciler import Reconciler
from cloudlet.agent.staging import Stager
from cloudlet.agent.store import Store
from cloudlet.agent.vm import VmBuilder
from cloudlet.compute import FakeDriver
from cloudlet.compute.qemu import QemuDriver
from cloudlet.errors import DriverUnavailableError
from cloudlet.schemas import ActualState, DesiredInstance, DesiredStateDoc
from cloudlet.schemas.artifacts import ArtifactKind
from cloudlet.synthesis import base_digest, create_overlay, read_manifest
from cloudlet.testbed.guest import GuestImage, build_guest
from unit.agent.agent_blob_server import CREDENTIAL, BlobServer

QEMU = shutil.which("qemu-system-x86_64")
DEBUGFS = shutil.which("debugfs") or shutil.which("debugfs", path="/usr/sbin:/sbin")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.qemu,
    pytest.mark.skipif(
        QEMU is None,
        reason="qemu-system-x86_64 is not installed"
        " (apt-get install -y --no-install-recommends qemu-system-x86 qemu-utils)",
    ),
    pytest.mark.skipif(DEBUGFS is None, reason="debugfs is not installed (apt-get e2fsprogs)"),
]

PAGE = "hello from a VM synthesized at the edge\n"
log = logging.getLogger(__name__)


@pytest.fixture(scope="module")
def guest(request: pytest.FixtureRequest) -> GuestImage:
    cache = Path(request.config.cache.mkdir("cloudlet-guest"))
    try:
        return build_guest(cache)
    except DriverUnavailableError as exc:
        pytest.skip(f"cannot build the test guest: {exc}")


def app_images(guest: GuestImage, work: Path) -> tuple[Path, Path]:
    """The guest's root disk as the base, and an overlay that changes its served page."""
    base = work / "base.img"
    shutil.copyfile(guest.disk, base)
    modified = work / "modified.img"
    shutil.copyfile(guest.disk, modified)
    page = work / "index.html"
    page.write_text(PAGE)
    assert DEBUGFS is not None
    for command in ("rm srv/www/index.html", f"write {page} srv/www/index.html"):
        subprocess.run([DEBUGFS, "-w", "-R", command, str(modified)], check=True,
                       capture_output=True)  # fmt: skip
    overlay = work / "app.ovl"
    create_overlay(base, modified, overlay, threads=2)
    return base, overlay


def test_a_vm_app_is_synthesized_booted_and_served(
    guest: GuestImage, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, overlay = app_images(guest, tmp_path)
    digest = base_digest(base).hex()
    overlay_id = read_manifest(overlay).root_digest.hex()
    inst = DesiredInstance.model_validate(
        {
            "id": "vm1",
            "name": "edge-web",
            "app": "edge-web",
            "project": "admin",
            "desired_state": "running",
            "components": [
                {
                    "kind": "vm",
                    "image": digest,
                    "overlay": overlay_id,
                    "guest_port": guest.guest_port,
                    "env": guest.vm_env(),
                }
            ],
            "resources": {"vcpus": 1, "memory_mib": 256},
            "revision": 1,
        }
    )
    store = Store.open(tmp_path / "agent.db")
    qemu: list[QemuDriver] = []

    def make_qemu() -> QemuDriver:
        qemu.append(QemuDriver(tmp_path / "workloads" / "qemu", stop_timeout=10.0))
        return qemu[0]

    with BlobServer() as server:
        server.add_image(digest, base)
        server.add_overlay(overlay_id, overlay)
        doc = DesiredStateDoc(site="s", revision=1, full=True, since=0, instances=[inst])
        doc.images.append(digest)
        desired.apply_doc(store, doc)
        cache = ArtifactCache(store, tmp_path / "cache", budget_bytes=1 << 30)
        stager = Stager(cache, lambda: (server.url, CREDENTIAL), backoff_max_s=0.5)
        rec = Reconciler(
            store,
            DriverSet(FakeDriver(), make_qemu),
            vm=VmBuilder(stager, tmp_path / "vms"),
            answer_timeout_s=90,
        )

        async def run() -> actual.ActualRow:
            try:
                for _ in range(1200):  # bounded: a hung boot fails the probe first
                    await rec.reconcile_once()
                    row = actual.get(store, "vm1")
                    if row is not None and row.state in (ActualState.RUNNING, ActualState.FAILED):
                        return row
                    await asyncio.sleep(0.1)
                raise AssertionError(f"the VM instance did not settle: {actual.get(store, 'vm1')}")
            finally:
                await stager.aclose()

        try:
            row = asyncio.run(run())
            assert row.state is ActualState.RUNNING, row.reason
            assert httpx.get(f"http://{row.endpoint}/", timeout=10).text == PAGE
            assert {"fetch", "synthesize", "boot_or_resume", "first_answer"} <= set(row.timings)
            with capsys.disabled():
                print(f"\nVM path timings (s): {json.dumps(row.timings, sort_keys=True)}")
            assert cache.complete_path(ArtifactKind.OVERLAY, overlay_id) is not None
            assert cache.complete_path(ArtifactKind.IMAGE, digest) is not None
            [held] = [c for c in cache.listing() if c.kind is ArtifactKind.IMAGE]
            assert held.complete and held.fetched == base.stat().st_size
        finally:
            asyncio.run(rec.shutdown(keep_workloads=False))
            for driver in qemu:
                driver.close()
            store.close()
    assert not [
        p
        for p in psutil.process_iter(["cmdline"])
        if str(tmp_path) in " ".join(p.info["cmdline"] or [])
    ], "QEMU left running"
