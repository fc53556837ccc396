"""Instance lifecycle, decommission drains and reconnects, with a real controller and agent.

Stop, start, suspend (refused for processes), resume and restart through the API and
through the site-local API with the controller down; usage stops while stopped; a
decommission drains before it revokes; an agent finds a restarted controller fast.
"""

from __future__ import annotations

import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from cloudlet.testbed.local import LocalAgent, LocalController, wait_for

pytestmark = pytest.mark.integration


def _app(tmp_path: Path) -> dict[str, Any]:
    script = tmp_path / "pid.py"
    script.write_text(
        textwrap.dedent(
            """
            import http.server, os
            class H(http.server.BaseHTTPRequestHandler):
                def do_GET(self):
                    body = str(os.getpid()).encode()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                def log_message(self, *args):
                    pass
            http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
            """
        )
    )
    return {
        "name": "pid",
        "components": [{"name": "main", "command": [sys.executable, str(script)]}],
        "resources": {"vcpus": 0.1, "memory_mib": 32, "disk_gib": 0.01},
        "latency_bound_ms": 20,
    }


@dataclass
class Fleet:
    controller: LocalController
    agent: LocalAgent
    api: httpx.Client

    def instance(self, ref: str) -> dict[str, Any]:
        return self.api.get(f"/v1/instances/{ref}").json()

    def wait_state(self, ref: str, state: str, timeout: float = 30) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            item = self.instance(ref)
            assert item["actual_state"] != "failed", item
            return item if item["actual_state"] == state else None

        return wait_for(reached, timeout, f"{ref} {state}\n{self.agent.proc.log_tail()}")

    def events(self, instance: str, kind: str) -> list[dict[str, Any]]:
        params = {"instance": instance, "kind": kind, "limit": 10_000}
        return self.api.get("/v1/events", params=params).json()

    def act(self, ref: str, action: str) -> httpx.Response:
        return self.api.post(f"/v1/instances/{ref}/{action}")


def _pid(endpoint: str) -> int:
    return int(httpx.get(f"http://{endpoint}/", timeout=5).text)


def _serving_pid(endpoint: str) -> int:
    """The workload's pid once it answers ("running" means started, not yet listening)."""
    wait_for(lambda: _serves(endpoint), 30, f"an answer on {endpoint}")
    return _pid(endpoint)


def _serves(endpoint: str) -> bool:
    try:
        _pid(endpoint)
    except httpx.HTTPError:
        return False
    return True


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    ctl = LocalController(tmp_path / "ctl", offline_grace_s=3).start()
    api = ctl.client()
    token = api.post("/v1/sites", json={"name": "lyon"}).json()["join_token"]["token"]
    agent = LocalAgent(
        "lyon",
        tmp_path / "lyon",
        ctl.url,
        join_token=token,
        env={"CLOUDLET_AGENT__USAGE_INTERVAL_S": "0.5", "CLOUDLET_AGENT__ANNOUNCE": "false"},
    ).start()
    try:
        wait_for(lambda: api.get("/v1/sites/lyon").json()["availability"] == "online", 30, "enroll")
        api.post("/v1/apps", json=_app(tmp_path)).raise_for_status()
        yield Fleet(ctl, agent, api)
    finally:
        agent.stop()
        ctl.stop()
        api.close()


def test_stop_start_restart_and_suspend_refused_for_processes(fleet: Fleet) -> None:
    created = fleet.api.post("/v1/instances", json={"app": "pid", "name": "web"}).json()
    item = fleet.wait_state("web", "running")
    first_pid = _serving_pid(item["endpoint"])
    assert item["usage_since"] is not None  # the open usage interval, reported by the site

    answer = fleet.act("web", "stop")
    assert answer.status_code == 202 and answer.json()["desired_state"] == "stopped"
    stopped = fleet.wait_state("web", "stopped")
    assert not _serves(item["endpoint"]) and not psutil.pid_exists(first_pid)
    assert stopped["usage_since"] is None
    stopped_at = time.time()
    time.sleep(2)  # four usage periods: none of them may count the stopped instance
    usage = fleet.events(created["id"], "usage")
    assert usage, "the running interval was recorded when it stopped"
    last_end = max(datetime.fromisoformat(e["data"]["end"]).timestamp() for e in usage)
    assert last_end <= stopped_at

    refused = fleet.act("web", "suspend")
    assert refused.status_code == 409
    assert "cannot be suspended" in refused.json()["detail"]
    assert "main" in refused.json()["detail"]  # names the process component
    assert fleet.act("web", "resume").status_code == 409  # stopped, not suspended

    assert fleet.act("web", "start").status_code == 202
    item = fleet.wait_state("web", "running")
    second_pid = _serving_pid(item["endpoint"])
    assert second_pid != first_pid

    before = fleet.instance("web")["updated_at"]
    restarted = fleet.act("web", "restart").json()
    assert restarted["restarts"] == 1 and restarted["desired_state"] == "running"
    wait_for(lambda: _serves(item["endpoint"]) and _pid(item["endpoint"]) != second_pid, 30,
             "the restarted workload")  # fmt: skip

    def restart_reported() -> bool:
        states = [
            (e["data"]["state"], e["data"]["reason"])
            for e in fleet.events(created["id"], "instance.state")
            if datetime.fromisoformat(e["at"]) >= datetime.fromisoformat(before)
        ]
        return ("stopping", "restart requested") in states

    wait_for(restart_reported, 30, "the restart's events")
    assert fleet.wait_state("web", "running")["restarts"] == 1
    # Asked again for the state it is in: nothing changes, the site is not touched.
    revision = fleet.api.get("/v1/sites/lyon").json()["revision"]
    assert fleet.act("web", "start").status_code == 202
    assert fleet.api.get("/v1/sites/lyon").json()["revision"] == revision
    assert fleet.act("web", "jump").status_code == 404  # no such action: no such resource


def test_site_local_lifecycle_while_the_controller_is_down(fleet: Fleet) -> None:
    created = fleet.api.post("/v1/instances", json={"app": "pid", "name": "web"}).json()
    item = fleet.wait_state("web", "running")
    local = fleet.agent.local_api()
    assert local is not None
    verify = fleet.agent.verify  # HTTPS: the CA the site pinned at join
    fleet.controller.proc.kill()
    wait_for(lambda: fleet.agent.health()["controller_reachable"] is False, 30, "agent noticing")

    def local_state(state: str) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            got = httpx.get(
                f"{local}/v1/local/instances/{created['id']}", timeout=5, verify=verify
            ).json()
            return got if got["state"] == state else None

        return wait_for(reached, 30, f"local {state}")

    base = f"{local}/v1/local/instances/{created['id']}"
    assert httpx.post(f"{base}/stop", timeout=5, verify=verify).status_code == 202
    local_state("stopped")
    assert not _serves(item["endpoint"])
    refused = httpx.post(f"{base}/suspend", timeout=5, verify=verify)
    assert refused.status_code == 409 and "cannot be suspended" in refused.json()["detail"]
    assert httpx.post(f"{base}/start", timeout=5, verify=verify).status_code == 202
    running = local_state("running")
    pid = _serving_pid(running["endpoint"])
    assert httpx.post(f"{base}/restart", timeout=5, verify=verify).status_code == 202
    wait_for(lambda: _serves(running["endpoint"]) and _pid(running["endpoint"]) != pid, 30,
             "restarted at the site")  # fmt: skip
    assert (
        httpx.post(f"{local}/v1/local/instances/nope/stop", timeout=5, verify=verify).status_code
        == 404
    )

    # The link returns: the controller hears what happened, from the outbox.
    fleet.controller.start()
    wait_for(lambda: fleet.agent.health()["outbox_depth"] == 0, 30, "outbox drained")
    states = [e["data"]["state"] for e in fleet.events(created["id"], "instance.state")]
    assert states.count("stopped") >= 1 and states.count("running") >= 3
    assert fleet.instance("web")["actual_state"] == "running"


def test_decommission_drains_then_revokes(fleet: Fleet) -> None:
    created = fleet.api.post("/v1/instances", json={"app": "pid", "name": "web"}).json()
    item = fleet.wait_state("web", "running")
    pid = _serving_pid(item["endpoint"])

    site = fleet.api.post("/v1/sites/lyon/decommission").json()
    assert site["state"] == "draining"
    # No new placements while it drains, and nothing started there by name.
    placed = fleet.api.post("/v1/instances", json={"app": "pid"})
    assert placed.status_code == 409 and "1 draining" in placed.json()["detail"]
    named = fleet.api.post("/v1/instances", json={"app": "pid", "site": "lyon"})
    assert named.status_code == 409 and "draining" in named.json()["detail"]

    wait_for(lambda: fleet.api.get("/v1/sites/lyon").json()["state"] == "decommissioned", 30,
             f"decommissioned\n{fleet.agent.proc.log_tail()}")  # fmt: skip
    assert not psutil.pid_exists(pid) and not _serves(item["endpoint"])
    assert fleet.api.get(f"/v1/instances/{created['id']}").status_code == 404
    drained = fleet.events(created["id"], "instance.drained")
    assert drained and "stopped and removed" in drained[0]["data"]["note"]
    kinds = [e["kind"] for e in fleet.api.get("/v1/events", params={"site": "lyon"}).json()]
    assert kinds.index("site.draining") < kinds.index("site.decommissioned")
    # The agent's report of the deletion came before the revocation, not after.
    reported = [e for e in fleet.events(created["id"], "instance.state")]
    assert any(e["data"]["state"] == "deleted" for e in reported)
    wait_for(lambda: fleet.agent.health()["sync_revoked"], 30, "the agent told it is revoked")


def test_decommission_force_revokes_at_once(fleet: Fleet) -> None:
    fleet.api.post("/v1/instances", json={"app": "pid", "name": "web"}).raise_for_status()
    fleet.wait_state("web", "running")
    fleet.agent.stop()  # an agent that will never report back
    site = fleet.api.post("/v1/sites/lyon/decommission").json()
    assert site["state"] == "draining"
    time.sleep(2)  # the drain loop runs every second: it must not finish without the agent
    assert fleet.api.get("/v1/sites/lyon").json()["state"] == "draining"
    forced = fleet.api.post("/v1/sites/lyon/decommission", params={"force": "true"}).json()
    assert forced["state"] == "decommissioned"


def test_an_agent_finds_a_restarted_controller_within_seconds(fleet: Fleet) -> None:
    fleet.controller.stop()
    # Long enough for the backoff to grow to several seconds (0.5 s doubling).
    wait_for(lambda: fleet.agent.health()["controller_reachable"] is False, 30, "agent noticing")
    time.sleep(10)
    fleet.controller.start()
    back, back_wall = time.monotonic(), datetime.now(UTC)

    def reported() -> bool:
        health = fleet.agent.health() or {}
        last = health.get("last_report_at")
        return bool(last) and datetime.fromisoformat(last) > back_wall

    wait_for(reported, 30, "a report after the restart", interval=0.05)
    took = time.monotonic() - back
    # The probe (every 0.5-1.5 s, then up to 1 s of spread) finds it; waiting out the
    # backoff alone would take up to 16 s here.
    assert took < 6, f"took {took:.1f}s to reconnect"
    wait_for(lambda: fleet.api.get("/v1/sites/lyon").json()["availability"] == "online", 30,
             "online again")  # fmt: skip
    # Not asserted: which of the probe and a loop's own retry got there first.
