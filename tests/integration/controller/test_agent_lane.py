"""The agents' lane past the framework (api/agent_lane.py) against a real controller:
it answers well-formed calls as the routes would, and leaves everything else to the
routes, whose answers (problem+json) must not change."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from cloudlet.testbed.local import LocalController

pytestmark = pytest.mark.integration

PROBLEM = "application/problem+json"


def _problem(response: httpx.Response, status: int, slug: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    assert response.json()["type"].endswith("/" + slug), response.json()


@pytest.fixture
def agent(api: httpx.Client, controller: LocalController) -> Iterator[httpx.Client]:
    token = api.post("/v1/sites", json={"name": "lyon"}).json()["join_token"]["token"]
    enrolled = httpx.post(f"{controller.url}/v1/agent/enroll", json={"join_token": token})
    assert enrolled.status_code == 201, enrolled.text
    credential = enrolled.json()["credential"]
    auth = {"authorization": f"Bearer {credential}"}
    with httpx.Client(base_url=controller.url, headers=auth) as client:
        yield client


def test_a_pull_and_a_heartbeat_are_answered(agent: httpx.Client) -> None:
    full = agent.get("/v1/agent/desired", params={"since": 0, "wait": 0})
    assert full.status_code == 200 and full.headers["content-type"] == "application/json"
    doc = full.json()
    assert doc["full"] and doc["site"] == "lyon" and doc["instances"] == []
    revision = doc["revision"]
    unchanged = agent.get("/v1/agent/desired", params={"since": revision, "wait": 0.2})
    assert unchanged.status_code == 204 and unchanged.content == b""

    ack = agent.post("/v1/agent/report", json={"applied_revision": revision, "agent_version": "x"})
    assert ack.status_code == 200, ack.text
    assert ack.json()["acked_seq"] == 0 and ack.json()["revision"] == revision
    assert "rejected" in ack.json() and "server_time" in ack.json()


def test_the_routes_still_answer_what_the_lane_does_not_take(
    agent: httpx.Client, controller: LocalController
) -> None:
    _problem(agent.get("/v1/agent/desired", params={"since": "x", "wait": 0}), 422, "invalid-input")
    _problem(agent.get("/v1/agent/desired", params={"since": 1, "wait": 301}), 422, "invalid-input")
    other_order = agent.get("/v1/agent/desired?wait=0&since=0")  # the route takes it
    assert other_order.status_code == 200 and other_order.json()["full"]

    stranger = httpx.get(f"{controller.url}/v1/agent/desired?since=0&wait=0")
    _problem(stranger, 401, "auth")
    assert stranger.headers["www-authenticate"] == "Bearer"
    forged = httpx.post(
        f"{controller.url}/v1/agent/report",
        json={"applied_revision": 0},
        headers={"authorization": "Bearer not-a-site"},
    )
    _problem(forged, 401, "auth")

    _problem(agent.post("/v1/agent/report", json={"applied_revision": -1}), 422, "invalid-input")
    _problem(agent.post("/v1/agent/report", json={"events": "many"}), 422, "invalid-input")
    malformed = agent.post(
        "/v1/agent/report", content=b"{", headers={"content-type": "application/json"}
    )
    _problem(malformed, 400, "malformed-json")


def test_the_lanes_answers_are_counted_by_their_route(
    agent: httpx.Client, api: httpx.Client
) -> None:
    for _ in range(3):
        agent.post("/v1/agent/report", json={"applied_revision": 0}).raise_for_status()
    metrics = api.get("/metrics").text
    timed = [
        line
        for line in metrics.splitlines()
        if line.startswith("cloudlet_http_request_duration_seconds_count")
        and 'route="/v1/agent/report"' in line
    ]
    assert timed and float(timed[0].rsplit(" ", 1)[1]) >= 3, timed
