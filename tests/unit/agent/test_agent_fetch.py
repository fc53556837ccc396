"""Fetching artifacts by HTTP range: resumable downloads, verification, HttpRangeSource."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from agent_blob_server import CREDENTIAL, BlobServer
from agent_fakes import doc

from cloudlet.agent import desired
from cloudlet.agent.artifacts import ArtifactCache
from cloudlet.agent.fetch import HttpRangeSource, blob_url
from cloudlet.agent.staging import Stager
from cloudlet.agent.store import Store
from cloudlet.errors import (
    AuthError,
    ControllerUnreachableError,
    IntegrityError,
    NotFoundError,
    OverlayFormatError,
)
from cloudlet.schemas.artifacts import ArtifactKind
from cloudlet.synthesis import StreamingApplier, base_digest, create_overlay, read_manifest

IMAGE, OVERLAY = ArtifactKind.IMAGE, ArtifactKind.OVERLAY


@pytest.fixture
def server() -> Iterator[BlobServer]:
    with BlobServer() as s:
        yield s


@pytest.fixture
def image(tmp_path: Path) -> tuple[str, bytes]:
    """A 3 MiB raw image and its digest."""
    data = np.random.default_rng(1).integers(0, 256, 3 << 20, dtype=np.uint8).tobytes()
    path = tmp_path / "src.img"
    path.write_bytes(data)
    return base_digest(path).hex(), data


def stager_for(store: Store, root: Path, server: BlobServer, budget: int = 1 << 30) -> Stager:
    cache = ArtifactCache(store, root, budget_bytes=budget)
    return Stager(cache, lambda: (server.url, CREDENTIAL), backoff_max_s=0.05)


def test_a_cut_download_resumes_from_the_persisted_offset(
    store: Store, tmp_path: Path, server: BlobServer, image: tuple[str, bytes]
) -> None:
    digest, data = image
    server.add_image(digest, data)
    server.cut_next = 1_234_567

    async def first() -> None:
        stager = stager_for(store, tmp_path / "cache", server)
        try:
            with pytest.raises(ControllerUnreachableError):
                await stager.ensure(IMAGE, digest)
        finally:
            await stager.aclose()

    asyncio.run(first())
    art = ArtifactCache(store, tmp_path / "cache", 1 << 30).get(IMAGE, digest)
    assert art is not None and not art.complete and 0 < art.fetched <= 1_234_567
    assert art.size == len(data)
    resumed_at = art.fetched

    async def after_restart() -> Path:  # a new cache and stager on the same store
        stager = stager_for(store, tmp_path / "cache", server)
        try:
            return await stager.ensure(IMAGE, digest)
        finally:
            await stager.aclose()

    path = asyncio.run(after_restart())
    assert path.read_bytes() == data
    assert [r for _, r in server.requests] == [None, f"bytes={resumed_at}-"]
    cache = ArtifactCache(store, tmp_path / "cache", 1 << 30)
    art = cache.get(IMAGE, digest)
    assert art is not None and art.complete and art.fetched == len(data)
    assert cache.complete_path(IMAGE, digest) == path
    assert not cache.part_path(IMAGE, digest).exists()


def test_bytes_that_do_not_match_the_digest_are_dropped(
    store: Store, tmp_path: Path, server: BlobServer, image: tuple[str, bytes]
) -> None:
    digest, data = image
    server.add_image(digest, data[:-1] + b"\x00")

    async def go() -> None:
        stager = stager_for(store, tmp_path / "cache", server)
        try:
            with pytest.raises(IntegrityError):
                await stager.ensure(IMAGE, digest)
        finally:
            await stager.aclose()

    asyncio.run(go())
    cache = ArtifactCache(store, tmp_path / "cache", 1 << 30)
    assert cache.get(IMAGE, digest) is None
    assert not cache.part_path(IMAGE, digest).exists()


def test_refusals_are_domain_errors(store: Store, tmp_path: Path, server: BlobServer) -> None:
    async def go() -> None:
        stager = stager_for(store, tmp_path / "cache", server)
        try:
            with pytest.raises(NotFoundError):
                await stager.ensure(IMAGE, "ab" * 32)
            server.credential = "another"
            with pytest.raises(AuthError):
                await stager.ensure(IMAGE, "ab" * 32)
            server.offline = True
            with pytest.raises(ControllerUnreachableError):
                await stager.ensure(IMAGE, "ab" * 32, attempts=2)
        finally:
            await stager.aclose()

    asyncio.run(go())


def test_prestaging_fetches_the_desired_images(
    store: Store, tmp_path: Path, server: BlobServer, image: tuple[str, bytes]
) -> None:
    digest, data = image
    server.add_image(digest, data)
    d = doc(1, [], full=True)
    d.images.append(digest)
    desired.apply_doc(store, d)

    async def go() -> bool:
        stager = stager_for(store, tmp_path / "cache", server, budget=1)
        try:
            assert stager.missing_images() == [digest]
            ok = await stager.prestage_once()
            assert stager.missing_images() == []
            return ok
        finally:
            await stager.aclose()

    assert asyncio.run(go())
    cache = ArtifactCache(store, tmp_path / "cache", 1)
    [wire] = cache.listing()
    assert wire.complete and wire.fetched == wire.size == len(data)
    cache.evict()  # over its 1-byte budget, but pinned by the desired images list
    assert cache.complete_path(IMAGE, digest) is not None


@pytest.fixture
def overlay(tmp_path: Path) -> dict[str, Path | str]:
    rng = np.random.default_rng(3)
    base = rng.integers(0, 256, 600 * 4096, dtype=np.uint8)
    mod = base.copy()
    mod[100 * 4096 : 400 * 4096] = rng.integers(0, 256, 300 * 4096, dtype=np.uint8)
    (tmp_path / "base.img").write_bytes(base.tobytes())
    (tmp_path / "mod.img").write_bytes(mod.tobytes())
    create_overlay(tmp_path / "base.img", tmp_path / "mod.img", tmp_path / "o.ovl", threads=2)
    oid = read_manifest(tmp_path / "o.ovl").root_digest.hex()
    return {"base": tmp_path / "base.img", "mod": tmp_path / "mod.img", "ovl": tmp_path / "o.ovl",
            "id": oid}  # fmt: skip


def test_http_range_source_reads_exact_ranges(server: BlobServer, overlay: dict) -> None:
    blob = Path(overlay["ovl"]).read_bytes()
    server.add_overlay(str(overlay["id"]), blob)
    url = blob_url(server.url, OVERLAY, str(overlay["id"]))
    with HttpRangeSource(url, CREDENTIAL) as src:
        assert src.size is None
        assert src.read_range(10, 100) == blob[10:110]
        assert src.size == len(blob)
        assert src.read_range(len(blob) - 5, 5) == blob[-5:]
        with pytest.raises(OverlayFormatError):
            src.read_range(len(blob) - 5, 10)
        with pytest.raises(OverlayFormatError):
            src.read_range(len(blob) + 1, 10)
    assert all(r and r.startswith("bytes=") for _, r in server.requests)


def test_synthesis_streams_through_http_and_keeps_a_whole_copy(
    server: BlobServer, overlay: dict, tmp_path: Path
) -> None:
    blob = Path(overlay["ovl"]).read_bytes()
    server.add_overlay(str(overlay["id"]), blob)
    url = blob_url(server.url, OVERLAY, str(overlay["id"]))
    out = tmp_path / "out.img"
    with HttpRangeSource(url, CREDENTIAL, tee=tmp_path / "copy.part") as src:
        applier = StreamingApplier(src, overlay["base"], out, threads=3)
        applier.start()
        applier.wait()
        read = src.bytes_fetched
        assert read <= len(blob)
        src.fill_gaps()
        assert src.gaps() == []
    assert out.read_bytes() == Path(overlay["mod"]).read_bytes()
    assert (tmp_path / "copy.part").read_bytes() == blob


def test_a_server_without_ranges_makes_the_download_start_over(
    store: Store, tmp_path: Path, server: BlobServer, image: tuple[str, bytes]
) -> None:
    digest, data = image
    server.add_image(digest, data)
    server.cut_next = 500_000

    async def go() -> Path:
        stager = stager_for(store, tmp_path / "cache", server)
        try:
            with pytest.raises(ControllerUnreachableError):
                await stager.ensure(IMAGE, digest)
            server.ranges = False
            return await stager.ensure(IMAGE, digest)
        finally:
            await stager.aclose()

    path = asyncio.run(go())
    assert path.read_bytes() == data
    assert server.requests[1][1] is not None  # it asked to resume, got everything
