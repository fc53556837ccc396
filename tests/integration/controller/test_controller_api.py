"""The controller API against a real controller process, on SQLite and PostgreSQL."""

from __future__ import annotations

import time

import httpx
import pytest

from cloudlet.testbed.local import LocalController

pytestmark = pytest.mark.integration

PROBLEM = "application/problem+json"
WEB_APP = {
    "name": "web",
    "components": [{"name": "main", "command": ["python3", "-m", "http.server"]}],
    "resources": {"vcpus": 0.5, "memory_mib": 128, "disk_gib": 0.1},
}


def _problem(response: httpx.Response, status: int, slug: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["type"].endswith("/" + slug), body
    assert body["status"] == status and body["detail"]
    return body


def _counts(api: httpx.Client) -> tuple[int, int, int]:
    return (
        len(api.get("/v1/sites").json()),
        len(api.get("/v1/apps").json()),
        len(api.get("/v1/instances").json()),
    )


def test_openapi_lists_every_resource(api: httpx.Client) -> None:
    paths = api.get("/openapi.json").json()["paths"]
    for path in (
        "/v1/sites", "/v1/apps", "/v1/instances", "/v1/events", "/v1/alarms", "/v1/agent/desired",
    ):  # fmt: skip
        assert path in paths


def test_enrollment_with_one_time_token(api: httpx.Client, controller: LocalController) -> None:
    created = api.post("/v1/sites", json={"name": "lyon", "latitude": 45.76, "longitude": 4.84})
    assert created.status_code == 201, created.text
    token = created.json()["join_token"]["token"]
    assert created.json()["site"]["state"] == "registered"

    enrolled = httpx.post(f"{controller.url}/v1/agent/enroll", json={"join_token": token})
    assert enrolled.status_code == 201, enrolled.text
    credential = enrolled.json()["credential"]
    site = api.get("/v1/sites/lyon").json()
    assert site["state"] == "active" and site["availability"] == "online"

    again = httpx.post(f"{controller.url}/v1/agent/enroll", json={"join_token": token})
    assert "already used" in _problem(again, 401, "auth")["detail"]

    pulled = httpx.get(
        f"{controller.url}/v1/agent/desired",
        params={"since": 0},
        headers={"Authorization": f"Bearer {credential}"},
    )
    assert pulled.status_code == 200 and pulled.json()["full"] is True


def test_expired_and_unknown_join_tokens_are_refused(
    api: httpx.Client, controller: LocalController
) -> None:
    created = api.post("/v1/sites", json={"name": "nice", "join_token_ttl_s": 1}).json()
    time.sleep(1.2)  # let the one-second token expire
    expired = httpx.post(
        f"{controller.url}/v1/agent/enroll", json={"join_token": created["join_token"]["token"]}
    )
    _problem(expired, 401, "token-expired")
    unknown = httpx.post(f"{controller.url}/v1/agent/enroll", json={"join_token": "clt_join_nope"})
    _problem(unknown, 401, "auth")
    assert api.get("/v1/sites/nice").json()["state"] == "registered"


def test_bad_input_is_refused_and_writes_nothing(
    api: httpx.Client, controller: LocalController
) -> None:
    api.post("/v1/sites", json={"name": "lyon"}).raise_for_status()
    before = _counts(api)

    _problem(api.post("/v1/instances", json={"app": "nope"}), 404, "not-found")
    bad_memory = {**WEB_APP, "resources": {"memory_mib": -5}}
    body = _problem(api.post("/v1/apps", json=bad_memory), 422, "invalid-input")
    assert "memory_mib" in str(body["detail"])
    malformed = api.post(
        "/v1/apps", content=b'{"name": "web", ', headers={"content-type": "application/json"}
    )
    _problem(malformed, 400, "malformed-json")
    _problem(api.post("/v1/apps", json={**WEB_APP, "name": "Bad Name"}), 422, "invalid-input")
    _problem(api.post("/v1/apps", json={**WEB_APP, "colour": "red"}), 422, "invalid-input")
    bad_constraint = {**WEB_APP, "constraints": ["region=>eu"]}
    _problem(api.post("/v1/apps", json=bad_constraint), 422, "invalid-input")
    _problem(api.post("/v1/sites", json={"name": "lyon"}), 409, "conflict")
    _problem(api.get("/v1/sites/atlantis"), 404, "not-found")
    _problem(api.post("/v1/sites/atlantis/decommission"), 404, "not-found")

    api.post("/v1/apps", json=WEB_APP).raise_for_status()
    _problem(api.post("/v1/instances", json={"app": "web", "site": "atlantis"}), 404, "not-found")
    # lyon has no agent yet: placement finds nothing and says why.
    no_fit = _problem(api.post("/v1/instances", json={"app": "web"}), 409, "no-placement")
    assert "no site fits" in str(no_fit["detail"])

    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}):
        r = httpx.post(f"{controller.url}/v1/apps", json=WEB_APP, headers=headers)
        _problem(r, 401, "auth")
    r = httpx.post(
        f"{controller.url}/v1/agent/report",
        json={"applied_revision": 0},
        headers={"Authorization": "Bearer clt_site_forged"},
    )
    _problem(r, 401, "auth")

    sites, apps, instances = _counts(api)
    assert (sites, apps, instances) == (before[0], before[1] + 1, before[2])
    assert api.get("/v1/events", params={"kind": "usage"}).json() == []


def test_events_are_stored_once_per_sequence(
    api: httpx.Client, controller: LocalController
) -> None:
    token = api.post("/v1/sites", json={"name": "lyon"}).json()["join_token"]["token"]
    cred = httpx.post(f"{controller.url}/v1/agent/enroll", json={"join_token": token}).json()
    headers = {"Authorization": f"Bearer {cred['credential']}"}
    events = [
        {"seq": n, "kind": "usage", "at": "2026-11-21T05:00:00Z", "data": {"seconds": 60}}
        for n in (1, 2, 3)
    ]
    url = f"{controller.url}/v1/agent/report"
    first = httpx.post(url, json={"applied_revision": 0, "events": events}, headers=headers)
    assert first.json()["acked_seq"] == 3
    # The ack was "lost": the agent sends 2..4 again, plus a new one.
    events.append({**events[0], "seq": 4})
    again = httpx.post(url, json={"applied_revision": 0, "events": events[1:]}, headers=headers)
    assert again.json()["acked_seq"] == 4
    usage = api.get("/v1/events", params={"kind": "usage", "site": "lyon"}).json()
    assert sorted(e["seq"] for e in usage) == [1, 2, 3, 4]


def test_site_alarms_raised_and_cleared_offline_arrive_as_one_history_row(
    api: httpx.Client, controller: LocalController
) -> None:
    token = api.post("/v1/sites", json={"name": "lyon"}).json()["join_token"]["token"]
    cred = httpx.post(f"{controller.url}/v1/agent/enroll", json={"join_token": token}).json()
    headers = {"Authorization": f"Bearer {cred['credential']}"}
    signal = {"alarm_id": "site.disk-low", "severity": "minor", "reason": "disk 95% full"}
    events = [
        {"seq": 1, "kind": "alarm", "at": "2026-12-03T05:00:00Z",
         "data": {**signal, "state": "raise", "entity": "site=elsewhere"}},
        {"seq": 2, "kind": "alarm", "at": "2026-12-03T05:10:00Z",
         "data": {**signal, "state": "clear"}},
        # A plain alarm (no alarm_id, no state) stays an event only.
        {"seq": 3, "kind": "alarm", "at": "2026-12-03T05:11:00Z", "data": {"message": "folded"}},
    ]  # fmt: skip
    url = f"{controller.url}/v1/agent/report"
    ack = httpx.post(url, json={"applied_revision": 0, "events": events}, headers=headers)
    assert ack.json()["acked_seq"] == 3, ack.text
    # The ack was lost: the raise comes again, and must not raise the alarm anew.
    again = httpx.post(url, json={"applied_revision": 0, "events": events[:1]}, headers=headers)
    assert again.status_code == 200, again.text
    [alarm] = api.get("/v1/alarms", params={"site": "lyon"}).json()
    assert alarm["alarm_id"] == "site.disk-low" and alarm["entity"] == "site=lyon"
    assert alarm["raised_at"].startswith("2026-12-03T05:00:00")
    assert alarm["cleared_at"].startswith("2026-12-03T05:10:00")
    assert alarm["source"] == "site" and alarm["severity"] == "minor" and not alarm["active"]
    assert api.get("/v1/alarms", params={"active": "true"}).json() == []
    _problem(api.get("/v1/alarms", params={"site": "nope"}), 404, "not-found")
    _problem(api.get("/v1/alarms", params={"active": "maybe"}), 422, "invalid-input")
    # A member of another project sees no site alarms (they are the operator's).
    member = controller.create_token("tenant-ci", project="tenant-b", role="member")
    with controller.client(member) as tenant:
        assert tenant.get("/v1/alarms").json() == []
