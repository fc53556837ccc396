"""What a fuzzer and a hostile site tried, against a real controller process (SQLite and
PostgreSQL): each class of bad request answers a clear problem and writes nothing."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest

from cloudlet.controller.api.openapi import PUBLIC
from cloudlet.testbed.local import LocalController

pytestmark = pytest.mark.integration

PROBLEM = "application/problem+json"
JSON = {"content-type": "application/json"}
WEB_APP = {"name": "web", "components": [{"command": ["python3", "-m", "http.server"]}]}


def _problem(response: httpx.Response, status: int, slug: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["type"].endswith("/" + slug), body
    return body


def _everything(api: httpx.Client) -> dict[str, int]:
    """How many of each thing the controller holds: nothing may change on a refusal."""
    return {
        path: len(api.get(path, params={"limit": 10_000} if path == "/v1/events" else {}).json())
        for path in ("/v1/sites", "/v1/apps", "/v1/instances", "/v1/uploads", "/v1/events")
    }


def _enrolled(api: httpx.Client, controller: LocalController, name: str) -> str:
    token = api.post("/v1/sites", json={"name": name}).json()["join_token"]["token"]
    enrolled = httpx.post(f"{controller.url}/v1/agent/enroll", json={"join_token": token})
    assert enrolled.status_code == 201, enrolled.text
    return enrolled.json()["credential"]


# -- 1. server errors on bad input -------------------------------------------------------


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_numbers_are_malformed_json_on_every_endpoint(
    api: httpx.Client, controller: LocalController, literal: str
) -> None:
    credential = _enrolled(api, controller, "lyon")
    before = _everything(api)
    bodies = {
        "/v1/agent/enroll": '{"join_token": "x" , "capacity": {"vcpus": %s}}',
        "/v1/sites": '{"name": "paris", "latitude": %s}',
        "/v1/apps": '{"name": "a", "components": [{"command": ["x"]}], "latency_bound_ms": %s}',
        "/v1/instances": '{"app": "web", "client_latitude": %s}',
        "/v1/uploads": '{"kind": "image", "name": "i", "size": %s}',
        "/v1/agent/report": '{"applied_revision": 0, "utilization": {"cpu": %s}}',
    }
    for path, template in bodies.items():
        headers = {**JSON, "authorization": f"Bearer {credential}"} if "agent" in path else JSON
        client = httpx if path == "/v1/agent/enroll" else api
        response = client.post(
            f"{controller.url}{path}", content=template % literal, headers=headers
        )
        _problem(response, 400, "malformed-json")
    assert _everything(api) == before


def test_invalid_utf8_is_the_malformed_json_problem(
    api: httpx.Client, controller: LocalController
) -> None:
    response = httpx.post(
        f"{controller.url}/v1/agent/enroll", content=b'{"join_token": "\xff\xfe"}', headers=JSON
    )
    assert "UTF-8" in str(_problem(response, 400, "malformed-json")["detail"])


def test_nul_characters_are_refused_wherever_text_goes(
    api: httpx.Client, controller: LocalController
) -> None:
    # PostgreSQL cannot store U+0000: on either database the answer is one 422.
    before = _everything(api)
    _problem(api.get("/v1/images", params={"project": "a\x00b"}), 422, "invalid-input")
    _problem(api.get("/v1/sites/ly%00on"), 422, "invalid-input")
    body = '{"name": "web", "description": "a\\u0000b", "components": [{"command": ["x"]}]}'
    _problem(api.post("/v1/apps", content=body, headers=JSON), 422, "invalid-input")
    literal = '{"name": "web", "description": "a\\\\u0000b", "components": [{"command": ["x"]}]}'
    assert api.post("/v1/apps", content=literal, headers=JSON).status_code == 201
    assert _everything(api) == {**before, "/v1/apps": 1}


def test_patch_with_null_is_refused_unless_null_means_clear(api: httpx.Client) -> None:
    api.post("/v1/sites", json={"name": "lyon", "latitude": 45.7, "labels": {"tier": "a"}})
    for field in ("labels", "region"):
        refused = api.patch("/v1/sites/lyon", json={field: None})
        assert field in str(_problem(refused, 422, "invalid-input")["detail"])
    site = api.get("/v1/sites/lyon").json()
    assert site["labels"] == {"tier": "a"} and site["region"] == "default"
    cleared = api.patch("/v1/sites/lyon", json={"latitude": None})
    assert cleared.status_code == 200 and cleared.json()["latitude"] is None


def test_an_unknown_project_is_a_404_that_leaves_no_row_and_no_file(
    api: httpx.Client, controller: LocalController
) -> None:
    before = _everything(api)
    upload = api.post(
        "/v1/uploads", json={"kind": "image", "name": "base", "size": 10, "project": "nope"}
    )
    assert "project 'nope'" in str(_problem(upload, 404, "not-found")["detail"])
    app = api.post("/v1/apps", json={**WEB_APP, "project": "nope"})
    assert "project 'nope'" in str(_problem(app, 404, "not-found")["detail"])
    assert _everything(api) == before
    uploads = controller.data_dir / "uploads"
    assert not uploads.exists() or os.listdir(uploads) == []


# -- 2. no request size limit ---------------------------------------------------------------


def test_a_declared_oversized_body_is_refused_unread(controller: LocalController) -> None:
    # A raw socket: the client declares 50 MB and sends one byte. The answer must come
    # without the controller waiting for (or reading) the rest.
    with socket.create_connection(("127.0.0.1", controller.port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/agent/enroll HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 52428800\r\n\r\n{"
        )
        answer = b""
        while b"}" not in answer:
            piece = sock.recv(65536)
            if not piece:
                break
            answer += piece
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), head
    assert b"application/problem+json" in head and b"too-large" in body


def test_an_undeclared_oversized_body_is_cut_at_the_bound(
    api: httpx.Client, controller: LocalController
) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"name": "x", "description": "'
        for _ in range(64):  # 4 MiB, past the 1 MiB JSON bound
            yield b"a" * 65536
        yield b'"}'

    before = _everything(api)
    response = api.post("/v1/sites", content=chunks(), headers=JSON)
    _problem(response, 413, "too-large")
    assert _everything(api) == before


def test_fields_are_bounded_and_errors_never_echo_the_input(api: httpx.Client) -> None:
    big = "v" * 900_000
    app = {"name": "fat", "components": [{"command": ["true"], "env": {"BLOB": big}}]}
    response = api.post("/v1/apps", json=app)
    body = _problem(response, 422, "invalid-input")
    assert "env" in str(body["detail"]) and len(response.content) < 2000
    assert big[:100] not in response.text
    labels = {f"k{i}": "v" for i in range(65)}
    _problem(api.post("/v1/sites", json={"name": "many", "labels": labels}), 422, "invalid-input")
    long_command = {"name": "long", "components": [{"command": ["x" * 5000]}]}
    _problem(api.post("/v1/apps", json=long_command), 422, "invalid-input")
    assert api.get("/v1/apps").json() == [] and api.get("/v1/sites").json() == []


# -- 3. a site writing another site's history ----------------------------------------------


def _usage(seq: int, instance: str | None, **data: object) -> dict[str, object]:
    at = datetime.now(UTC).isoformat()
    return {"seq": seq, "kind": "usage", "instance": instance, "at": at, "data": data}


def test_a_site_cannot_write_another_sites_history(
    api: httpx.Client, controller: LocalController
) -> None:
    a = _enrolled(api, controller, "site-a")
    _enrolled(api, controller, "site-b")
    assert api.post("/v1/apps", json=WEB_APP).status_code == 201
    theirs = api.post("/v1/instances", json={"app": "web", "site": "site-b"}).json()["id"]

    forged = [_usage(900_001, theirs, seconds=999_999, project="admin")]
    ack = httpx.post(
        f"{controller.url}/v1/agent/report",
        json={"applied_revision": 0, "events": forged},
        headers={"authorization": f"Bearer {a}"},
    )
    assert ack.status_code == 200, ack.text
    [refused] = ack.json()["rejected"]
    assert refused["seq"] == 900_001 and refused["reason"]
    assert ack.json()["acked_seq"] == 0, "a refused jump must not move site A's sequence"
    assert api.get("/v1/events", params={"instance": theirs, "kind": "usage"}).json() == []

    honest = [_usage(1, None, note="mine"), _usage(2, theirs, seconds=5)]
    ack = httpx.post(
        f"{controller.url}/v1/agent/report",
        json={"applied_revision": 0, "events": honest},
        headers={"authorization": f"Bearer {a}"},
    ).json()
    assert ack["acked_seq"] == 2 and [r["seq"] for r in ack["rejected"]] == [2]
    stored = api.get("/v1/events", params={"site": "site-a", "kind": "usage"}).json()
    assert [e["seq"] for e in stored] == [1]


# -- 4. events leaking across projects, 403 for roles --------------------------------------


def test_a_member_sees_only_its_projects_events_and_is_refused_admin_work(
    api: httpx.Client, controller: LocalController
) -> None:
    credential = _enrolled(api, controller, "lyon")
    assert api.post("/v1/apps", json=WEB_APP).status_code == 201
    admin_instance = api.post("/v1/instances", json={"app": "web", "site": "lyon"}).json()["id"]
    httpx.post(
        f"{controller.url}/v1/agent/report",
        json={"applied_revision": 0, "events": [_usage(1, admin_instance, seconds=60)]},
        headers={"authorization": f"Bearer {credential}"},
    ).raise_for_status()
    assert len(api.get("/v1/events").json()) >= 3  # the admin sees the fleet's events

    member = controller.create_token("tenant-ci", project="tenant-b", role="member")
    with controller.client(member) as tenant:
        events = tenant.get("/v1/events").json()
        assert events == [], events
        assert tenant.get("/v1/events", params={"instance": admin_instance}).json() == []
        assert tenant.get("/v1/instances").json() == []
        assert all(s["instances"] == 0 for s in tenant.get("/v1/sites").json())
        _problem(tenant.post("/v1/sites", json={"name": "rogue"}), 403, "forbidden")
        _problem(tenant.patch("/v1/sites/lyon", json={"region": "x"}), 403, "forbidden")
        _problem(tenant.post("/v1/apps", json={**WEB_APP, "project": "admin"}), 403, "forbidden")
        own = tenant.post("/v1/apps", json=WEB_APP)
        assert own.status_code == 201 and own.json()["project"] == "tenant-b"
    assert api.get("/v1/sites/lyon").json()["region"] == "default"

    reader = controller.create_token("tenant-audit", project="tenant-b", role="reader")
    with controller.client(reader) as auditor:
        assert [a["name"] for a in auditor.get("/v1/apps").json()] == ["web"]
        _problem(auditor.delete("/v1/apps/web"), 403, "forbidden")
        upload = {"kind": "image", "name": "i", "size": 1}
        _problem(auditor.post("/v1/uploads", json=upload), 403, "forbidden")
    with controller.client(member) as tenant:
        assert [a["name"] for a in tenant.get("/v1/apps").json()] == ["web"]


# -- 5. the spec says what the API answers -------------------------------------------------


def test_the_openapi_document_declares_every_error_as_problem_json(api: httpx.Client) -> None:
    document = api.get("/openapi.json").json()
    assert "bearer" in document["components"]["securitySchemes"]
    operations = [
        (method, path, op)
        for path, item in document["paths"].items()
        for method, op in item.items()
        if method in ("get", "post", "put", "patch", "delete")
    ]
    assert len(operations) >= 30
    for method, path, op in operations:
        for code in ("401", "404", "422"):
            content = op["responses"][code]["content"]
            assert list(content) == [PROBLEM], (method, path, code)
        if (method, path) not in PUBLIC:
            assert op["security"] == [{"bearer": []}] and "403" in op["responses"]
        if "requestBody" in op:
            assert {"400", "413"} <= op["responses"].keys(), (method, path)


def test_an_unsupported_method_answers_405_with_allow(controller: LocalController) -> None:
    response = httpx.request("TRACE", f"{controller.url}/v1/sites")
    body = _problem(response, 405, "method-not-allowed")
    assert set(response.headers["allow"].split(", ")) == {"GET", "HEAD", "POST"}
    assert "TRACE" in str(body["detail"])
