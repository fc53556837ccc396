"""Paged lists (#10): limit, an opaque cursor in X-Next-Cursor and Link rel=next, and
filters run in the database, against a real controller on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import json
import re

import httpx
import pytest

from cloudlet.testbed.local import LocalController

pytestmark = pytest.mark.integration

PROBLEM = "application/problem+json"


def _pages(api: httpx.Client, path: str, **params: object) -> list[list[dict[str, object]]]:
    """Every page, following X-Next-Cursor; checks Link says the same."""
    pages, cursor = [], None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = api.get(path, params=query)
        assert response.status_code == 200, response.text
        pages.append(response.json())
        cursor = response.headers.get("x-next-cursor")
        if cursor is None:
            assert "link" not in response.headers
            return pages
        link = re.fullmatch(r'<([^>]+)>; rel="next"', response.headers["link"])
        assert link and link[1].startswith(path + "?") and f"cursor={cursor}" in link[1]
        # The link repeats the query: following it gives the same page as the cursor.
        assert api.get(link[1]).json() == api.get(path, params={**params, "cursor": cursor}).json()


def _enroll(controller: LocalController, token: str) -> dict[str, str]:
    cred = httpx.post(f"{controller.url}/v1/agent/enroll", json={"join_token": token}).json()
    return {"Authorization": f"Bearer {cred['credential']}"}


def _site(api: httpx.Client, name: str, **body: object) -> str:
    created = api.post("/v1/sites", json={"name": name, **body})
    assert created.status_code == 201, created.text
    return created.json()["join_token"]["token"]


def test_sites_page_by_name_and_filter_in_the_database(
    api: httpx.Client, controller: LocalController
) -> None:
    names = [f"s{i:02d}" for i in range(7)]
    tokens = {}
    for i, name in enumerate(reversed(names)):
        labels = {"tier": "edge" if i % 2 else "core", "zone.io/x": str(i % 3)}
        tokens[name] = _site(api, name, region="eu" if i < 4 else "us", labels=labels)
    for name in ("s01", "s04"):
        _enroll(controller, tokens[name])

    assert [s["name"] for s in api.get("/v1/sites").json()] == names  # one page, as before
    pages = _pages(api, "/v1/sites", limit=3)
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [s["name"] for p in pages for s in p] == names

    def names_of(**params: object) -> list[str]:
        return [s["name"] for p in _pages(api, "/v1/sites", limit=2, **params) for s in p]

    assert names_of(region="us") == ["s00", "s01", "s02"]
    assert names_of(availability="online") == ["s01", "s04"]
    assert names_of(availability="unknown") == ["s00", "s02", "s03", "s05", "s06"]
    assert names_of(availability="offline") == []
    assert names_of(label="tier=edge") == ["s01", "s03", "s05"]
    assert names_of(label=["tier=edge", "zone.io/x=2"]) == ["s01"]
    assert names_of(label="tier=edge", region="us", availability="online") == ["s01"]
    assert names_of(label="nope=x") == []


def _instances(api: httpx.Client, n: int) -> list[str]:
    """``n`` instances w0, w1, ... at nice and lyon in turn (sites and app made here)."""
    _site(api, "lyon")
    _site(api, "nice")
    api.post(
        "/v1/apps",
        json={
            "name": "web",
            "components": [{"name": "main", "command": ["true"]}],
            "resources": {"vcpus": 0.1, "memory_mib": 16, "disk_gib": 0.1},
        },
    ).raise_for_status()
    made = []
    for i in range(n):
        site = "lyon" if i % 2 else "nice"
        body = {"app": "web", "site": site, "name": f"w{i}"}
        made.append(api.post("/v1/instances", json=body).json()["name"])
    return made


def test_instances_page_oldest_first(api: httpx.Client) -> None:
    made = _instances(api, 5)
    everything = api.get("/v1/instances").json()
    assert [i["name"] for i in everything] == made
    pages = _pages(api, "/v1/instances", limit=2)
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [i for p in pages for i in p] == everything
    lyon = _pages(api, "/v1/instances", limit=1, site="lyon")
    assert [i["name"] for p in lyon for i in p] == ["w1", "w3"]


def test_events_page_back_merged_in_order(api: httpx.Client, controller: LocalController) -> None:
    headers = _enroll(controller, _site(api, "lyon"))  # site.registered, site.enrolled
    # Site events at the same time as each other and around the controller's.
    events = [
        {"seq": n, "kind": "usage", "at": f"2026-11-21T05:00:0{n // 2}Z", "data": {"n": n}}
        for n in range(1, 8)
    ]
    url = f"{controller.url}/v1/agent/report"
    report = httpx.post(url, json={"applied_revision": 0, "events": events}, headers=headers)
    assert report.json()["acked_seq"] == 7, report.text
    everything = api.get("/v1/events", params={"limit": 10_000}).json()
    assert len(everything) == 9
    assert [e["seq"] for e in everything[:7]] == [1, 2, 3, 4, 5, 6, 7]
    assert [e["kind"] for e in everything[7:]] == ["site.registered", "site.enrolled"]
    assert [e["at"] for e in everything] == sorted(e["at"] for e in everything)

    pages = _pages(api, "/v1/events", limit=2)
    assert [len(p) for p in pages] == [2, 2, 2, 2, 1]
    # Each page is oldest first; the next page is the one before it.
    assert [e for p in reversed(pages) for e in p] == everything
    assert api.get("/v1/events", params={"limit": 2}).json() == everything[-2:]  # as before

    usage = _pages(api, "/v1/events", limit=3, kind="usage", since="2026-11-21T05:00:01Z")
    assert [e["seq"] for p in reversed(usage) for e in p] == [2, 3, 4, 5, 6, 7]
    mine = _pages(api, "/v1/events", limit=1, site="lyon", kind="site.enrolled")
    assert [[e["kind"] for e in p] for p in mine] == [["site.enrolled"]]


def _cursor(doc: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()


@pytest.mark.parametrize("path", ["/v1/sites", "/v1/instances", "/v1/events"])
def test_bad_cursors_and_limits_are_problems_not_crashes(api: httpx.Client, path: str) -> None:
    _instances(api, 2)
    good = api.get(path, params={"limit": 1}).headers["x-next-cursor"]
    other = "/v1/sites" if path != "/v1/sites" else "/v1/events"
    foreign = api.get(other, params={"limit": 1}).headers["x-next-cursor"]
    for cursor in (
        "x", "!!!", "=", good[:-3], foreign, _cursor([1]), _cursor({"v": 2, "k": []}),
        _cursor({"v": 1, "r": path[4:], "k": [1, 2, 3, 4]}),
        _cursor({"v": 1, "r": path[4:], "k": ["2026-01-01", 0, "", 1]}),
        _cursor({"v": 1, "r": path[4:], "k": [None, None, None]}),
        _cursor({"v": 1, "r": path[4:], "k": [True, 2**70, {}, []]}),
        "A" * 5000,
    ):  # fmt: skip
        response = api.get(path, params={"cursor": cursor})
        assert response.status_code == 422, (cursor, response.text)
        assert response.headers["content-type"].startswith(PROBLEM)
        assert response.json()["type"].endswith("/invalid-input")
    top = 10_000 if path == "/v1/events" else 1000
    for limit in (0, -1, top + 1, "many"):
        response = api.get(path, params={"limit": limit})
        assert response.status_code == 422 and "limit" in response.json()["detail"]
    assert api.get(path, params={"limit": top}).status_code == 200
    if path == "/v1/sites":
        for label in ("tier", "=x", "a b=c"):
            response = api.get(path, params={"label": label})
            assert response.status_code == 422 and "label" in response.json()["detail"]
