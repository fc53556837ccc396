"""VM components without QEMU: a fake VM driver whose 'guest' serves its disk over HTTP.

The agent's whole VM path runs for real around it: the base fetched from a stub blob
server into the cache, the overlay streamed by HTTP range and kept, the disk
synthesized, the workload created from it, the service probed, phases timed; then a
second start with the blob server gone, from the cache alone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from agent_blob_server import CREDENTIAL, BlobServer
from agent_fakes import doc, instance

from cloudlet.agent import actual, desired, outbox
from cloudlet.agent._specs import DriverSet
from cloudlet.agent.artifacts import ArtifactCache
from cloudlet.agent.metrics import AgentMetrics
from cloudlet.agent.reconciler import Reconciler
from cloudlet.agent.staging import Stager
from cloudlet.agent.store import Store
from cloudlet.agent.vm import VmBuilder
from cloudlet.compute import FakeDriver, WorkloadSpec
from cloudlet.errors import DriverError, DriverUnavailableError
from cloudlet.schemas import ActualState, DesiredInstance
from cloudlet.schemas.artifacts import ArtifactKind
from cloudlet.schemas.signing import ArtifactTrust, InstanceSigning, SignatureEntry, TrustedKey
from cloudlet.signing import PublisherKey
from cloudlet.synthesis import base_digest, create_overlay, read_manifest

PAGE_AT = 200 * 4096  # where the modified image holds its "page"


class FakeVmDriver(FakeDriver):
    """A FakeDriver taking VM specs: each started 'VM' serves bytes of its disk on its port."""

    name = "fake-vm"

    def __init__(self) -> None:
        super().__init__(program=self._boot)
        self.servers: list[http.server.HTTPServer] = []
        self.resumed: dict[str, tuple[bytes, bytes]] = {}

    def create(self, spec: WorkloadSpec) -> None:
        if spec.disk_image is None or not spec.disk_image.is_file():
            raise DriverError(f"workload {spec.workload_id!r}: no disk image")
        if spec.memory_image is not None:  # what QEMU would resume: RAM and device state
            state = spec.memory_image.with_name(spec.memory_image.name + ".vmstate")
            self.resumed[spec.workload_id] = (spec.memory_image.read_bytes(), state.read_bytes())
        super().create(dataclasses.replace(spec, command=("fake-qemu",)))

    def _boot(self, spec: WorkloadSpec) -> int | None:
        assert spec.disk_image is not None and spec.port is not None
        with open(spec.disk_image, "rb") as f:
            f.seek(PAGE_AT)
            page = f.read(32)

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

            def log_message(self, *args: object) -> None:
                pass

        server = http.server.HTTPServer(("127.0.0.1", spec.port), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.servers.append(server)
        return None

    def shutdown(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()


@pytest.fixture
def vm_driver() -> Iterator[FakeVmDriver]:
    driver = FakeVmDriver()
    yield driver
    driver.shutdown()


@pytest.fixture
def artifacts(tmp_path: Path) -> dict[str, object]:
    rng = np.random.default_rng(5)
    base = rng.integers(0, 256, 400 * 4096, dtype=np.uint8)
    mod = base.copy()
    mod[PAGE_AT : PAGE_AT + 32] = np.frombuffer(b"the modified page of the app!!\n\n", np.uint8)
    (tmp_path / "base.img").write_bytes(base.tobytes())
    (tmp_path / "mod.img").write_bytes(mod.tobytes())
    create_overlay(tmp_path / "base.img", tmp_path / "mod.img", tmp_path / "o.ovl", threads=2)
    return {
        "base": tmp_path / "base.img",
        "ovl": tmp_path / "o.ovl",
        "digest": base_digest(tmp_path / "base.img").hex(),
        "overlay": read_manifest(tmp_path / "o.ovl").root_digest.hex(),
    }


def vm_instance(
    iid: str, a: dict[str, object], revision: int = 1, memory_mib: int | None = None
) -> DesiredInstance:
    comp = {"kind": "vm", "image": a["digest"], "overlay": a["overlay"], "guest_port": 80}
    inst = instance(iid, components=[comp], revision=revision, app="vmapp")
    if memory_mib is not None:
        inst.resources.memory_mib = memory_mib
    return inst


def reconciler(
    store: Store,
    tmp_path: Path,
    driver: FakeDriver,
    remote: object,
    metrics: AgentMetrics | None = None,
) -> tuple[Reconciler, Stager]:
    metrics = metrics or AgentMetrics()
    cache = ArtifactCache(
        store, tmp_path / "cache", budget_bytes=1 << 30, on_lookup=metrics.cache_lookup
    )
    stager = Stager(cache, remote, backoff_max_s=0.05)  # type: ignore[arg-type]
    rec = Reconciler(
        store,
        DriverSet(FakeDriver(), lambda: driver),
        vm=VmBuilder(stager, tmp_path / "vms"),
        answer_timeout_s=10,
        metrics=metrics,
    )
    return rec, stager


async def settle(rec: Reconciler, store: Store, iid: str) -> actual.ActualRow:
    """Run passes until the instance leaves the starting phases (bounded)."""
    for _ in range(200):
        await rec.reconcile_once()
        row = actual.get(store, iid)
        if row is not None and row.state in (ActualState.RUNNING, ActualState.FAILED):
            return row
        await asyncio.sleep(0.05)
    raise AssertionError(f"instance {iid} did not settle: {actual.get(store, iid)}")


def test_a_vm_app_is_fetched_synthesized_started_and_probed(
    store: Store, tmp_path: Path, vm_driver: FakeVmDriver, artifacts: dict[str, object]
) -> None:
    with BlobServer() as server:
        server.add_image(str(artifacts["digest"]), Path(str(artifacts["base"])))
        server.add_overlay(str(artifacts["overlay"]), Path(str(artifacts["ovl"])))
        desired.apply_doc(store, doc(1, [vm_instance("i1", artifacts)], full=True))
        metrics = AgentMetrics()
        rec, stager = reconciler(
            store, tmp_path, vm_driver, lambda: (server.url, CREDENTIAL), metrics
        )

        async def go() -> actual.ActualRow:
            try:
                return await settle(rec, store, "i1")
            finally:
                await stager.aclose()

        row = asyncio.run(go())
    assert row.state is ActualState.RUNNING, row.reason
    assert {"fetch", "synthesize", "boot_or_resume", "first_answer"} <= set(row.timings)
    value = metrics.registry.get_sample_value
    for phase in ("fetch", "synthesize", "boot_or_resume", "first_answer"):
        labels = {"phase": phase}
        assert value("cloudlet_agent_vm_start_phase_seconds_count", labels) == 1
        observed = value("cloudlet_agent_vm_start_phase_seconds_sum", labels)
        assert observed == pytest.approx(row.timings[phase], abs=0.001)
    lookups = "cloudlet_agent_artifact_cache_lookups_total"
    for kind in ("image", "overlay"):
        assert value(lookups, {"kind": kind, "result": "miss"}) == 1
        assert value(lookups, {"kind": kind, "result": "hit"}) is None
    assert httpx.get(f"http://{row.endpoint}/").content.startswith(b"the modified page")
    states = [e.data["state"] for e in outbox.pending(store) if e.instance == "i1"]
    assert states == ["pending", "fetching", "synthesizing", "starting", "running"]
    cache = stager.cache
    assert cache.complete_path(ArtifactKind.OVERLAY, str(artifacts["overlay"])) is not None
    assert cache.complete_path(ArtifactKind.IMAGE, str(artifacts["digest"])) is not None

    # The blob server is gone: a site-local start of the same app works from the cache.
    site = desired.add_site_instance(store, "vmapp")
    rec2, stager2 = reconciler(store, tmp_path, vm_driver, lambda: None, metrics)

    async def offline() -> actual.ActualRow:
        try:
            return await settle(rec2, store, site.id)
        finally:
            await stager2.aclose()

    row2 = asyncio.run(offline())
    assert row2.state is ActualState.RUNNING, row2.reason
    for kind in ("image", "overlay"):
        assert value(lookups, {"kind": kind, "result": "hit"}) == 1
    assert value("cloudlet_agent_vm_start_phase_seconds_count", {"phase": "fetch"}) == 2
    assert httpx.get(f"http://{row2.endpoint}/").content.startswith(b"the modified page")


def test_an_uncached_vm_app_waits_for_the_link_then_starts(
    store: Store, tmp_path: Path, vm_driver: FakeVmDriver, artifacts: dict[str, object]
) -> None:
    desired.apply_doc(store, doc(1, [vm_instance("i1", artifacts)], full=True))
    link: list[tuple[str, str]] = []
    rec, stager = reconciler(store, tmp_path, vm_driver, lambda: link[0] if link else None)

    async def go(server: BlobServer) -> actual.ActualRow:
        try:
            for _ in range(100):  # bounded: until the instance says what it waits for
                await rec.reconcile_once()
                row = actual.get(store, "i1")
                if row is not None and row.reason:
                    break
                await asyncio.sleep(0.05)
            assert row is not None and row.state is ActualState.FETCHING
            assert "waiting for the controller" in (row.reason or "")
            assert "not cached" in (row.reason or "")
            link.append((server.url, CREDENTIAL))  # the link comes back
            return await settle(rec, store, "i1")
        finally:
            await stager.aclose()

    with BlobServer() as server:
        server.add_image(str(artifacts["digest"]), Path(str(artifacts["base"])))
        server.add_overlay(str(artifacts["overlay"]), Path(str(artifacts["ovl"])))
        row = asyncio.run(go(server))
    assert row.state is ActualState.RUNNING, row.reason
    assert row.reason is None


def test_without_qemu_a_vm_instance_fails_with_the_drivers_message(
    store: Store, tmp_path: Path, artifacts: dict[str, object]
) -> None:
    def no_qemu() -> FakeDriver:
        raise DriverUnavailableError("qemu-system-x86_64 is not installed (apt-get ...)")

    cache = ArtifactCache(store, tmp_path / "cache", budget_bytes=1 << 30)
    stager = Stager(cache, lambda: None)
    rec = Reconciler(store, DriverSet(FakeDriver(), no_qemu), vm=VmBuilder(stager, tmp_path))
    desired.apply_doc(store, doc(1, [vm_instance("i1", artifacts)], full=True))

    async def go() -> None:
        try:
            await rec.reconcile_once()
        finally:
            await stager.aclose()

    asyncio.run(go())
    row = actual.get(store, "i1")
    assert row is not None and row.state is ActualState.FAILED
    assert row.reason == "qemu-system-x86_64 is not installed (apt-get ...)"


def test_two_instances_of_one_app_start_together(
    store: Store, tmp_path: Path, vm_driver: FakeVmDriver, artifacts: dict[str, object]
) -> None:
    with BlobServer() as server:
        server.add_image(str(artifacts["digest"]), Path(str(artifacts["base"])))
        server.add_overlay(str(artifacts["overlay"]), Path(str(artifacts["ovl"])))
        both = [vm_instance("i1", artifacts), vm_instance("i2", artifacts)]
        desired.apply_doc(store, doc(1, both, full=True))
        rec, stager = reconciler(store, tmp_path, vm_driver, lambda: (server.url, CREDENTIAL))

        async def go() -> list[actual.ActualRow]:
            try:
                return [await settle(rec, store, "i1"), await settle(rec, store, "i2")]
            finally:
                await stager.aclose()

        rows = asyncio.run(go())
    for row in rows:
        assert row.state is ActualState.RUNNING, row.reason
        assert httpx.get(f"http://{row.endpoint}/").content.startswith(b"the modified page")
    overlay = stager.cache.complete_path(ArtifactKind.OVERLAY, str(artifacts["overlay"]))
    assert overlay is not None and overlay.read_bytes() == Path(str(artifacts["ovl"])).read_bytes()
    # One download of the base, whoever asked first.
    image_gets = [p for p, _ in server.requests if p.startswith("/v1/images/")]
    assert len(image_gets) == 1


@pytest.fixture
def resumable(artifacts: dict[str, object], tmp_path: Path) -> dict[str, object]:
    """The same app as a resumable overlay: 1 MiB of 'RAM' and a device state."""
    memory = np.random.default_rng(6).integers(0, 256, 1 << 20, dtype=np.uint8).tobytes()
    (tmp_path / "app.ram").write_bytes(memory)
    (tmp_path / "app.vmstate").write_bytes(b"QEVM device state")
    create_overlay(
        tmp_path / "base.img", tmp_path / "mod.img", tmp_path / "r.ovl", threads=2,
        memory=tmp_path / "app.ram", device_state=tmp_path / "app.vmstate",
    )  # fmt: skip
    return {
        **artifacts,
        "ovl": tmp_path / "r.ovl",
        "overlay": read_manifest(tmp_path / "r.ovl").root_digest.hex(),
        "memory": memory,
    }


def run_one(
    store: Store, tmp_path: Path, driver: FakeVmDriver, a: dict[str, object], inst: DesiredInstance
) -> actual.ActualRow:
    with BlobServer() as server:
        server.add_image(str(a["digest"]), Path(str(a["base"])))
        if "memory_base" in a:
            server.add_image(base_digest(a["memory_base"]).hex(), a["memory_base"])
        server.add_overlay(str(a["overlay"]), Path(str(a["ovl"])))
        desired.apply_doc(store, doc(1, [inst], full=True))
        rec, stager = reconciler(store, tmp_path, driver, lambda: (server.url, CREDENTIAL))

        async def go() -> actual.ActualRow:
            try:
                return await settle(rec, store, inst.id)
            finally:
                await stager.aclose()

        return asyncio.run(go())


def test_a_resumable_overlay_hands_the_driver_its_ram_once(
    store: Store, tmp_path: Path, vm_driver: FakeVmDriver, resumable: dict[str, object]
) -> None:
    row = run_one(store, tmp_path, vm_driver, resumable, vm_instance("i1", resumable, memory_mib=1))
    assert row.state is ActualState.RUNNING, row.reason
    assert vm_driver.resumed["i1-main"] == (resumable["memory"], b"QEVM device state")
    assert httpx.get(f"http://{row.endpoint}/").content.startswith(b"the modified page")
    # the driver resumed its own copy: the site's RAM image is dropped, a reboot boots
    assert not list((tmp_path / "vms" / "i1").glob("*.ram*"))


def test_a_resumable_overlay_of_another_memory_size_fails_clearly(
    store: Store, tmp_path: Path, vm_driver: FakeVmDriver, resumable: dict[str, object]
) -> None:
    inst = vm_instance("i1", resumable, memory_mib=2)
    row = run_one(store, tmp_path, vm_driver, resumable, inst)
    assert row.state is ActualState.FAILED
    assert "1 MiB of RAM" in (row.reason or "") and "gives it 2 MiB" in (row.reason or "")
    assert not vm_driver.resumed
    assert not list((tmp_path / "vms").glob("i1/*"))


def test_a_resumable_overlay_made_against_a_memory_base_fetches_it(
    store: Store, tmp_path: Path, vm_driver: FakeVmDriver, resumable: dict[str, object]
) -> None:
    """The base VM's RAM is an image of its own: the site fetches it like the disk base."""
    memory = bytearray(resumable["memory"])  # type: ignore[arg-type]
    memory_base = tmp_path / "base.ram"
    memory_base.write_bytes(bytes(memory))
    memory[4096:8192] = b"\x01" * 4096  # the app changed one page of the base VM's RAM
    (tmp_path / "app.ram").write_bytes(bytes(memory))
    create_overlay(
        tmp_path / "base.img", tmp_path / "mod.img", tmp_path / "mb.ovl", threads=2,
        memory=tmp_path / "app.ram", memory_base=memory_base,
        device_state=tmp_path / "app.vmstate",
    )  # fmt: skip
    a = {
        **resumable,
        "ovl": tmp_path / "mb.ovl",
        "overlay": read_manifest(tmp_path / "mb.ovl").root_digest.hex(),
        "memory_base": memory_base,
    }
    assert (tmp_path / "mb.ovl").stat().st_size < 100_000  # the RAM came from the base
    row = run_one(store, tmp_path, vm_driver, a, vm_instance("i1", a, memory_mib=1))
    assert row.state is ActualState.RUNNING, row.reason
    assert vm_driver.resumed["i1-main"] == (bytes(memory), b"QEVM device state")


KEY = PublisherKey.generate()


def _signed(a: dict[str, object], kind: str, digest: str | None = None) -> ArtifactTrust:
    named = str(a["digest"] if kind == "image" else a["overlay"])
    return ArtifactTrust(
        kind=ArtifactKind(kind),
        digest=named,
        keys=[TrustedKey(kid=KEY.kid, x=KEY.x)],
        signatures=[SignatureEntry(kid=KEY.kid, signature=KEY.sign(kind, digest or named))],
    )


@pytest.mark.parametrize(
    ("case", "require", "reason"),
    [
        ("signed", True, None),
        ("signed", False, None),
        ("unsigned", False, None),
        ("unsigned", True, "is not signed, and project 'admin' requires signatures"),
        ("image-unsigned", True, "image "),
        ("other-digest", False, "does not verify over the digest received"),
        ("revoked", False, "unknown or revoked"),
    ],
)
def test_signatures_are_checked_before_anything_is_synthesized(
    store: Store,
    tmp_path: Path,
    vm_driver: FakeVmDriver,
    artifacts: dict[str, object],
    case: str,
    require: bool,
    reason: str | None,
) -> None:
    trust = {
        "signed": [_signed(artifacts, "image"), _signed(artifacts, "overlay")],
        "unsigned": [],
        "image-unsigned": [_signed(artifacts, "overlay")],
        # Listed under the overlay's id, made over another digest (relabelled).
        "other-digest": [_signed(artifacts, "overlay", "ab" * 32)],
        "revoked": [_signed(artifacts, "overlay").model_copy(update={"keys": []})],
    }[case]
    inst = vm_instance("i1", artifacts)
    inst.signing = InstanceSigning(require_signatures=require, artifacts=trust)
    with BlobServer() as server:
        server.add_image(str(artifacts["digest"]), Path(str(artifacts["base"])))
        server.add_overlay(str(artifacts["overlay"]), Path(str(artifacts["ovl"])))
        desired.apply_doc(store, doc(1, [inst], full=True))
        rec, stager = reconciler(store, tmp_path, vm_driver, lambda: (server.url, CREDENTIAL))

        async def go() -> actual.ActualRow:
            try:
                return await settle(rec, store, "i1")
            finally:
                await stager.aclose()

        row = asyncio.run(go())
    if reason is None:
        assert row.state is ActualState.RUNNING, row.reason
        return
    assert row.state is ActualState.FAILED and reason in (row.reason or "")
    assert "refused" in (row.reason or "")
    assert not list((tmp_path / "vms").glob("i1/*.img"))  # nothing synthesized
    states = [(e.data["state"], e.data["reason"]) for e in outbox.pending(store)]
    assert states[-1] == ("failed", row.reason)
    assert "synthesizing" not in [s for s, _ in states]
