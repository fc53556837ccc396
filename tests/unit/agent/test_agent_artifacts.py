"""The artifact cache: rows and files, LRU eviction within a budget, pinning, listing."""

from __future__ import annotations

from pathlib import Path

import pytest
from agent_fakes import doc, instance

from cloudlet.agent import desired
from cloudlet.agent.artifacts import ArtifactCache
from cloudlet.agent.store import Store
from cloudlet.schemas.artifacts import ArtifactKind

IMAGE, OVERLAY = ArtifactKind.IMAGE, ArtifactKind.OVERLAY


def put(cache: ArtifactCache, kind: ArtifactKind, aid: str, size: int, used: float) -> Path:
    """A complete artifact of ``size`` bytes, last used at ``used``."""
    path = cache.path(kind, aid)
    path.write_bytes(b"x" * size)
    cache.mark_complete(kind, aid, size)
    with cache.store.transaction() as conn:
        conn.execute("UPDATE artifacts SET last_used = ? WHERE id = ?", (used, aid))
    return path


@pytest.fixture
def cache(store: Store, tmp_path: Path) -> ArtifactCache:
    return ArtifactCache(store, tmp_path / "cache", budget_bytes=100)


def test_lru_eviction_keeps_the_cache_within_budget(cache: ArtifactCache) -> None:
    old = put(cache, IMAGE, "a" * 64, 40, used=1.0)
    put(cache, OVERLAY, "b" * 64, 40, used=3.0)
    put(cache, IMAGE, "c" * 64, 40, used=2.0)
    removed = cache.evict()
    assert [a.id for a in removed] == ["a" * 64]
    assert not old.exists()
    assert cache.get(IMAGE, "a" * 64) is None
    assert {a.id for a in cache.all()} == {"b" * 64, "c" * 64}
    assert cache.evict() == []  # 80 <= 100


def test_a_touch_moves_an_artifact_to_the_back_of_the_queue(cache: ArtifactCache) -> None:
    put(cache, IMAGE, "a" * 64, 60, used=1.0)
    put(cache, IMAGE, "c" * 64, 60, used=2.0)
    cache.touch(IMAGE, "a" * 64)
    assert [a.id for a in cache.evict()] == ["c" * 64]


def test_pinned_artifacts_are_never_evicted(cache: ArtifactCache, store: Store) -> None:
    put(cache, IMAGE, "a" * 64, 50, used=1.0)  # desired image
    put(cache, OVERLAY, "b" * 64, 50, used=2.0)  # used by a live instance
    put(cache, IMAGE, "c" * 64, 50, used=3.0)  # being fetched
    put(cache, IMAGE, "d" * 64, 50, used=4.0)  # nothing holds it
    vm = [{"kind": "vm", "image": "e" * 64, "overlay": "b" * 64, "guest_port": 80}]
    d = doc(1, [instance("i1", components=vm)], full=True)
    d.images.append("a" * 64)
    desired.apply_doc(store, d)
    cache.hold(IMAGE, "c" * 64)
    assert [a.id for a in cache.evict()] == ["d" * 64]
    # Still over budget (150 > 100) but everything left is pinned: it stays.
    assert cache.evict() == []
    assert len(cache.all()) == 3
    # Once the instance is deleted and the image no longer desired, they may go.
    gone = instance("i1", state="deleted", revision=2, components=vm)
    desired.apply_doc(store, doc(2, [gone], since=1))
    cache.release(IMAGE, "c" * 64)
    assert [a.id for a in cache.evict()] == ["a" * 64]  # the oldest; then 100 fits


def test_partial_downloads_count_what_they_hold(cache: ArtifactCache) -> None:
    cache.begin(IMAGE, "a" * 64, 1000)
    cache.progress(IMAGE, "a" * 64, 30)
    art = cache.get(IMAGE, "a" * 64)
    assert art is not None and art.held == 30 and not art.complete
    assert cache.complete_path(IMAGE, "a" * 64) is None
    [wire] = cache.listing()
    assert (wire.complete, wire.fetched, wire.size, wire.kind) == (False, 30, 1000, IMAGE)


def test_every_listing_change_bumps_the_version(cache: ArtifactCache) -> None:
    calls: list[int] = []
    cache.on_change = lambda: calls.append(1)
    v0 = cache.version()
    put(cache, IMAGE, "a" * 64, 10, used=1.0)
    v1 = cache.version()
    cache.touch(IMAGE, "a" * 64)  # LRU order only: no report needed
    assert cache.version() == v1 > v0
    cache.remove(IMAGE, "a" * 64)
    assert cache.version() > v1 and calls
    assert cache.listing() == []


def test_desired_images_are_stored_with_the_cursor(store: Store) -> None:
    d = doc(3, [], full=True)
    d.images.extend(["f" * 64, "0" * 64])
    desired.apply_doc(store, d)
    assert desired.images(store) == ["0" * 64, "f" * 64] and store.cursor == 3
    desired.apply_doc(store, doc(4, [], since=3))  # the list is always complete
    assert desired.images(store) == []


def test_ids_cannot_escape_the_cache(cache: ArtifactCache) -> None:
    for bad in ("", "../x", ".hidden", "a/b"):
        with pytest.raises(ValueError):
            cache.path(IMAGE, bad)
