"""A VM app end to end on real QEMU: base and overlay from a stub blob server, the disk
synthesized at the site, the guest booted with its port forwarded, the modified page
served, every phase timed. First the reconciler's VM path alone, then a whole agent
(stub controller): pre-staging reported, the app started, then started again by a
site-local client with the controller gone.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from pathlib import Path

import httpx
import psutil
import pytest
from agent_stub_controller import CREDENTIAL as STUB_CREDENTIAL
from agent_stub_controller import TOKEN, ServerThread, StubController

from cloudlet.agent import actual, desired, run_agent
from cloudlet.agent._specs import DriverSet
from cloudlet.agent.artifacts import ArtifactCache
from cloudlet.agent.local_api import PORT_FILE
from cloudlet.agent.reconciler import Reconciler
from cloudlet.agent.staging import Stager
from cloudlet.agent.store import Store
from cloudlet.agent.vm import VmBuilder
from cloudlet.compute import FakeDriver
from cloudlet.compute.qemu import QemuDriver
from cloudlet.schemas import ActualState, DesiredInstance, DesiredStateDoc
from cloudlet.schemas.artifacts import ArtifactKind
from cloudlet.settings import AgentSettings
from cloudlet.synthesis import base_digest, create_overlay, read_manifest
from cloudlet.testbed.guest import GuestImage, with_page
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


def app_images(guest: GuestImage, work: Path) -> tuple[Path, Path]:
    """The guest's root disk as the base, and an overlay that changes its served page."""
    base = work / "base.img"
    shutil.copyfile(guest.disk, base)
    modified = with_page(guest, work / "modified.img", PAGE)
    overlay = work / "app.ovl"
    create_overlay(base, modified, overlay, threads=2)
    return base, overlay


def vm_app(guest: GuestImage, digest: str, overlay_id: str) -> DesiredInstance:
    return DesiredInstance.model_validate(
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


def test_a_vm_app_is_synthesized_booted_and_served(
    guest: GuestImage, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, overlay = app_images(guest, tmp_path)
    digest = base_digest(base).hex()
    overlay_id = read_manifest(overlay).root_digest.hex()
    inst = vm_app(guest, digest, overlay_id)
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


def test_a_whole_agent_prestages_serves_and_starts_offline_from_its_cache(
    guest: GuestImage, tmp_path: Path
) -> None:
    base, overlay = app_images(guest, tmp_path)
    digest = base_digest(base).hex()
    overlay_id = read_manifest(overlay).root_digest.hex()
    stub = StubController()
    blobs = BlobServer(credential=STUB_CREDENTIAL)
    blobs.add_image(digest, base)
    blobs.add_overlay(overlay_id, overlay)
    stub.app.add_route("/v1/{noun}/{aid}/blob", blobs.handle)
    stub.set_images([digest])
    stub.set_instance(vm_app(guest, digest, overlay_id))
    data = tmp_path / "agent"
    conf = AgentSettings(
        data_dir=data,
        join_token=TOKEN,
        insecure=True,  # the stub controller speaks plain HTTP
        driver="process",
        poll_wait_s=1,
        report_interval_s=0.2,
        reconcile_interval_s=0.2,
        backoff_max_s=0.2,
        local_port=0,
        announce=False,
        vm_answer_timeout_s=90,
    )

    async def local(method: str, path: str, **kwargs: object) -> httpx.Response:
        port = int((data / PORT_FILE).read_text())
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
            return await c.request(method, path, **kwargs)  # type: ignore[arg-type]

    async def running(instance_id: str | None = None) -> dict[str, object]:
        for _ in range(1200):  # bounded; a hung guest fails the agent's own probe first
            if (data / PORT_FILE).exists():
                for i in (await local("GET", "/v1/local/instances")).json():
                    if instance_id in (None, i["id"]) and i["state"] in ("running", "failed"):
                        return i
            await asyncio.sleep(0.1)
        raise AssertionError("the VM instance never settled")

    async def settled(instance_id: str, state: str) -> dict[str, object]:
        for _ in range(1200):
            got = (await local("GET", f"/v1/local/instances/{instance_id}")).json()
            if got["state"] in (state, "failed"):
                assert got["state"] == state, got["reason"]
                return got
            await asyncio.sleep(0.1)
        raise AssertionError(f"the VM instance never became {state}")

    async def scenario() -> None:
        stop = asyncio.Event()
        agent = asyncio.create_task(run_agent(conf.model_copy(update={"controller_url": url}),
                                              stop=stop))  # fmt: skip
        try:
            first = await running("vm1")
            assert first["state"] == "running", first["reason"]
            async with httpx.AsyncClient(timeout=10) as c:
                assert (await c.get(f"http://{first['endpoint']}/")).text == PAGE
            # The controller heard of the cache: the desired image, complete.
            for _ in range(100):
                caches = [r.cache for r in stub.reports if r.cache]
                if caches and any(c.digest == digest and c.complete for c in caches[-1]):
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"no complete image in the reported cache: {caches}")
            # The controller and its blobs are gone: a local client starts the app anyway.
            stub.offline = blobs.offline = True
            answer = await local("POST", "/v1/local/instances", json={"app": "edge-web"})
            assert answer.status_code == 202, answer.text
            second = await running(answer.json()["id"])
            assert second["state"] == "running", second["reason"]
            assert second["timings"]["fetch"] < 60  # from the cache: no network wait
            async with httpx.AsyncClient(timeout=10) as c:
                assert (await c.get(f"http://{second['endpoint']}/")).text == PAGE
            # Suspend and resume at the site, offline: the guest's RAM (its boot-time
            # token in tmpfs) and device state survive; a process instance could not.
            async with httpx.AsyncClient(timeout=10) as c:
                token = (await c.get(f"http://{second['endpoint']}/token")).text
            base = f"/v1/local/instances/{second['id']}"
            assert (await local("POST", f"{base}/suspend")).status_code == 202
            suspended = await settled(second["id"], "suspended")
            assert suspended["usage_since"] is None  # no usage while suspended
            assert (await local("POST", f"{base}/resume")).status_code == 202
            resumed = await running(second["id"])
            assert resumed["state"] == "running", resumed["reason"]
            async with httpx.AsyncClient(timeout=10) as c:
                assert (await c.get(f"http://{resumed['endpoint']}/token")).text == token
            log.info("resumed in %.3fs", resumed["timings"]["boot_or_resume"])
        finally:
            stop.set()
            await agent

    with ServerThread(stub.app) as server:
        url = server.url
        asyncio.run(scenario())
    assert not [
        p
        for p in psutil.process_iter(["cmdline"])
        if str(tmp_path) in " ".join(p.info["cmdline"] or [])
    ], "QEMU left running"
