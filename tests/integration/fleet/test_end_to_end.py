"""A real controller and real agents: deploy, serve, delete, and offline autonomy."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from cloudlet.testbed.local import LocalAgent, LocalController, wait_for

pytestmark = pytest.mark.integration

PAGE = "fire-watch says hello"


def _app(tmp_path: Path) -> dict[str, Any]:
    script = tmp_path / "hello.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import http.server, os
            class H(http.server.BaseHTTPRequestHandler):
                def do_GET(self):
                    body = {PAGE!r}.encode()
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
        "name": "hello",
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

    def wait_running(self, ref: str, timeout: float = 60) -> dict[str, Any]:
        def running() -> dict[str, Any] | None:
            item = self.instance(ref)
            assert item["actual_state"] != "failed", item
            return item if item["actual_state"] == "running" else None

        return wait_for(running, timeout, f"instance {ref} running\n{self.agent.proc.log_tail()}")

    def site_events(self) -> list[dict[str, Any]]:
        events = self.api.get("/v1/events", params={"site": "lyon", "limit": 10_000}).json()
        return [e for e in events if e["seq"] > 0]


@pytest.fixture
def fleet(tmp_path: Path, database_url: str | None) -> Iterator[Fleet]:
    ctl = LocalController(tmp_path / "ctl", database_url=database_url, offline_grace_s=3)
    ctl.start()
    api = ctl.client()
    token = api.post("/v1/sites", json={"name": "lyon", "latitude": 45.76, "longitude": 4.84})
    agent = LocalAgent(
        "lyon",
        tmp_path / "lyon",
        ctl.url,
        join_token=token.json()["join_token"]["token"],
        env={"CLOUDLET_AGENT__USAGE_INTERVAL_S": "0.5"},
    ).start()
    try:
        wait_for(lambda: api.get("/v1/sites/lyon").json()["availability"] == "online", 30, "enroll")
        api.post("/v1/apps", json=_app(tmp_path)).raise_for_status()
        yield Fleet(ctl, agent, api)
    finally:
        agent.stop()
        ctl.stop()
        api.close()


def _get(endpoint: str) -> str:
    return httpx.get(f"http://{endpoint}/", timeout=5).text


def test_deploy_serve_and_delete(fleet: Fleet) -> None:
    created = fleet.api.post("/v1/instances", json={"app": "hello"})
    assert created.status_code == 201, created.text
    assert created.json()["site"] == "lyon"  # placed: the only site
    item = fleet.wait_running(created.json()["id"])
    assert _get(item["endpoint"]) == PAGE

    fleet.api.delete(f"/v1/instances/{item['id']}").raise_for_status()
    wait_for(
        lambda: fleet.api.get(f"/v1/instances/{item['id']}").status_code == 404,
        30,
        "the deleted instance to disappear",
    )
    with pytest.raises(httpx.ConnectError):
        _get(item["endpoint"])
    site = fleet.api.get("/v1/sites/lyon").json()
    assert site["sync_status"] == "in-sync" and site["instances"] == 0


def test_offline_autonomy_and_exactly_once_catch_up(fleet: Fleet) -> None:
    created = fleet.api.post("/v1/instances", json={"app": "hello", "site": "lyon"}).json()
    item = fleet.wait_running(created["id"])
    workload_pid = _serving_pid(item["endpoint"])
    wait_for(lambda: fleet.agent.health()["outbox_depth"] == 0, 30, "outbox drained")
    delivered_before = len(fleet.site_events())

    # The controller dies: the workload keeps serving.
    fleet.controller.proc.kill()
    assert _get(item["endpoint"]) == PAGE
    wait_for(lambda: not fleet.agent.health()["controller_reachable"], 30, "agent noticing")

    # The agent restarts while the controller is still down: back from local state.
    fleet.agent.stop()
    assert not _port_open(item["endpoint"]), "stopping the agent must stop its workloads"
    fleet.agent.join_token = None
    fleet.agent.start()
    wait_for(lambda: _serves(item["endpoint"]), 30, "workload back after agent restart")
    assert _serving_pid(item["endpoint"]) != workload_pid
    health = wait_for(lambda: fleet.agent.health(), 30, "agent health")
    assert health["controller_reachable"] is False
    # Offline for a while: usage (every 0.5 s) and lifecycle events pile up.
    wait_for(lambda: fleet.agent.health()["outbox_depth"] >= 6, 30, "events recorded offline")

    # The link returns: everything recorded offline arrives, each exactly once.
    fleet.controller.start()
    wait_for(lambda: fleet.agent.health()["outbox_depth"] == 0, 60, "outbox drained")
    fleet.agent.stop()  # no new events from here on; its final report is flushed
    events = fleet.site_events()
    seqs = sorted(e["seq"] for e in events)
    assert seqs == list(range(1, len(seqs) + 1)), "a gap or a duplicate in site events"
    offline = len(events) - delivered_before
    assert offline >= 6
    kinds = {e["kind"] for e in events[delivered_before:]}
    assert {"usage", "agent.started", "instance.state"} <= kinds
    assert fleet.agent.proc is not None
    local = _local_outbox_seq(fleet.agent.data_dir)
    assert local == seqs[-1], "the controller must hold every sequence the agent issued"


def _port_open(endpoint: str) -> bool:
    port = endpoint.split(":")[1]
    return any(
        c.laddr and c.laddr.port == int(port) and c.status == psutil.CONN_LISTEN
        for c in psutil.net_connections("tcp")
    )


def _serves(endpoint: str) -> bool:
    try:
        return _get(endpoint) == PAGE
    except httpx.HTTPError:
        return False


def _serving_pid(endpoint: str) -> int:
    port = int(endpoint.split(":")[1])
    for c in psutil.net_connections("tcp"):
        if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN and c.pid:
            return c.pid
    raise AssertionError(f"nothing listens on {endpoint}")


def _local_outbox_seq(data_dir: Path) -> int:
    """The last sequence number the agent handed out, from its own store."""
    import sqlite3

    files = list(data_dir.glob("*.db")) + list(data_dir.glob("*.sqlite*"))
    assert files, f"no agent store in {data_dir}"
    with sqlite3.connect(files[0]) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert "meta" in tables, tables
        rows = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    return int(rows["next_seq"]) - 1
