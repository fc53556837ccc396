"""The site-local API over a store: health, instance lookup, site-origin instances."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
from agent_fakes import doc, instance

from cloudlet.agent import actual, desired, outbox
from cloudlet.agent.artifacts import ArtifactCache
from cloudlet.agent.local_api import create_app
from cloudlet.agent.reconciler import Reconciler
from cloudlet.agent.store import Store
from cloudlet.compute import FakeDriver
from cloudlet.schemas import EventKind
from cloudlet.schemas.artifacts import ArtifactKind


def call(store: Store, method: str, path: str, **kwargs: Any) -> httpx.Response:
    wakes: list[int] = []
    app = create_app(store, lambda: {"status": "ok"}, lambda: wakes.append(1))

    async def main() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://agent") as client:
            return await client.request(method, path, **kwargs)

    response = asyncio.run(main())
    if method in ("POST", "DELETE") and response.status_code < 300:
        assert wakes == [1]
    return response


def test_health_and_empty_list(store: Store) -> None:
    assert call(store, "GET", "/healthz").json() == {"status": "ok"}
    assert call(store, "GET", "/v1/local/instances").json() == []


def test_unknown_app_and_instance_are_problems(store: Store) -> None:
    r = call(store, "POST", "/v1/local/instances", json={"app": "web"})
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["type"] == "https://cloudlet.dev/problems/not-found"
    assert call(store, "GET", "/v1/local/instances/nope").status_code == 404
    assert call(store, "POST", "/v1/local/instances", json={"app": "Bad!"}).status_code == 422


def test_site_origin_instance_lifecycle(store: Store) -> None:
    desired.apply_doc(store, doc(3, [instance("c1", app="web")], full=True))
    r = call(store, "POST", "/v1/local/instances", json={"app": "web", "name": "mine"})
    assert r.status_code == 202
    new = r.json()
    assert (new["origin"], new["state"], new["name"]) == ("site", "pending", "mine")
    assert call(store, "GET", f"/v1/local/instances/{new['id']}").json()["state"] == "pending"
    created = [e for e in outbox.pending(store) if e.kind is EventKind.INSTANCE_CREATED]
    assert created[0].instance == new["id"] and created[0].data["template"] == "c1"

    driver = FakeDriver()
    asyncio.run(Reconciler(store, driver).reconcile_once())
    got = call(store, "GET", f"/v1/local/instances/{new['id']}").json()
    assert got["state"] == "running" and got["endpoint"]
    assert f"{new['id']}-main" in driver.list()

    # A controller snapshot does not remove what the site started on its own.
    desired.apply_doc(store, doc(4, [], full=True))
    assert desired.entries(store)[new["id"]].state.value == "running"

    assert call(store, "DELETE", "/v1/local/instances/c1").status_code == 409
    assert call(store, "DELETE", f"/v1/local/instances/{new['id']}").status_code == 202
    asyncio.run(Reconciler(store, driver).reconcile_once())
    assert actual.get(store, new["id"]).state.value == "deleted"  # type: ignore[union-attr]
    assert driver.list() == []


def test_the_cache_is_listed(store: Store, tmp_path: Path) -> None:
    assert call(store, "GET", "/v1/local/cache").json() == []
    cache = ArtifactCache(store, tmp_path / "cache", budget_bytes=1 << 20)
    cache.begin(ArtifactKind.IMAGE, "a" * 64, 10)
    cache.progress(ArtifactKind.IMAGE, "a" * 64, 4)
    [held] = call(store, "GET", "/v1/local/cache").json()
    assert (held["digest"], held["fetched"], held["complete"]) == ("a" * 64, 4, False)


def test_bodies_are_bounded_and_strictly_parsed(store: Store) -> None:
    headers = {"content-type": "application/json"}
    for body in (b'{"app": NaN}', b'{"app": "\xff"}'):
        r = call(store, "POST", "/v1/local/instances", content=body, headers=headers)
        assert r.status_code == 400 and r.json()["type"].endswith("/malformed-json")
    big = b'{"app": "' + b"a" * 70_000 + b'"}'
    r = call(store, "POST", "/v1/local/instances", content=big, headers=headers)
    assert r.status_code == 413 and r.json()["type"].endswith("/too-large")
    assert desired.entries(store) == {}
