"""Alarms with a real controller, a real agent and a real webhook receiver: site.offline
raised when the agent goes silent and cleared once it is back (one raise, one clear at
the receiver), and instance.crash-loop raised by the site for a process that keeps
exiting, with its restart count."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloudlet.testbed.local import LocalAgent, LocalController, wait_for

pytestmark = pytest.mark.integration


class Receiver:
    """A webhook receiver: an HTTP server in a thread that keeps every JSON body."""

    def __init__(self) -> None:
        got: list[dict[str, Any]] = []
        self.got = got

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                size = int(self.headers.get("Content-Length", 0))
                got.append(json.loads(self.rfile.read(size)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


AGENT_ENV = {
    "CLOUDLET_AGENT__ANNOUNCE": "false",
    "CLOUDLET_AGENT__RECONCILE_INTERVAL_S": "0.5",
}


@pytest.fixture
def offline_grace_s() -> float:
    """Long, so a report delayed by a loaded machine (the agent reports every second)
    cannot raise a site.offline the test did not cause; the test that cuts the site
    parametrizes it down to 4 s (2 s flapped on a loaded machine: a report late by
    more than a second after the restart raised the alarm again)."""
    return 30.0


@pytest.fixture
def fleet(
    tmp_path: Path, receiver: Receiver, offline_grace_s: float
) -> Iterator[tuple[LocalController, LocalAgent]]:
    env = {
        "CLOUDLET_CONTROLLER__ALARMS__WEBHOOK_URL": receiver.url,
        "CLOUDLET_CONTROLLER__ALARMS__CLEAR_HOLD_S": "1",
    }
    ctl = LocalController(tmp_path / "ctl", offline_grace_s=offline_grace_s, env=env).start()
    with ctl.client() as api:
        token = api.post("/v1/sites", json={"name": "lyon"}).json()["join_token"]["token"]
    agent = LocalAgent("lyon", tmp_path / "lyon", ctl.url, join_token=token, env=AGENT_ENV)
    agent.start()
    try:
        yield ctl, agent
    finally:
        agent.stop()
        ctl.stop()


def _alarms(api: httpx.Client, **params: str) -> list[dict[str, Any]]:
    answer = api.get("/v1/alarms", params=params)
    answer.raise_for_status()
    return answer.json()


def _cli(ctl: LocalController, *args: str) -> Any:
    done = subprocess.run(
        [sys.executable, "-m", "cloudlet.cli", "--url", ctl.url, "--token", ctl.token, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **ctl.cli_env()},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _online(api: httpx.Client) -> bool:
    return api.get("/v1/sites/lyon").json()["availability"] == "online"


@pytest.mark.parametrize("offline_grace_s", [4.0])
def test_site_offline_is_raised_once_and_cleared_once(
    fleet: tuple[LocalController, LocalAgent], receiver: Receiver
) -> None:
    ctl, agent = fleet
    with ctl.client() as api:
        _offline_and_back(ctl, agent, api, receiver)


def _offline_and_back(
    ctl: LocalController, agent: LocalAgent, api: httpx.Client, receiver: Receiver
) -> None:
    wait_for(lambda: _online(api), 30, "the site online")
    assert _alarms(api) == []
    agent.stop()

    def raised() -> list[dict[str, Any]]:
        return [
            a for a in _alarms(api, active="true", site="lyon") if a["alarm_id"] == "site.offline"
        ]

    [alarm] = wait_for(raised, 30, "site.offline raised")
    assert alarm["entity"] == "site=lyon" and alarm["severity"] == "major"
    assert alarm["source"] == "controller" and alarm["cleared_at"] is None
    shown = json.loads(_cli(ctl, "alarm", "list", "--active", "--site", "lyon", "--json"))
    assert [(a["alarm_id"], a["entity"]) for a in shown] == [("site.offline", "site=lyon")]
    assert "site.offline" in _cli(ctl, "alarm", "list")  # the table

    agent.join_token = None  # enrolled already: it comes back with its credential
    agent.start()
    wait_for(lambda: _online(api), 30, f"the site back online\n{agent.proc.log_tail()}")
    wait_for(lambda: _alarms(api, active="true") == [], 30, "site.offline cleared")
    [history] = _alarms(api, site="lyon")
    assert history["id"] == alarm["id"] and history["cleared_at"] is not None
    assert _cli(ctl, "alarm", "list", "--active", "--json").strip() == "[]"

    wait_for(lambda: len(receiver.got) >= 2, 30, "the webhook's raise and clear")
    assert [(n["alarm_id"], n["state"], n["site"]) for n in receiver.got] == [
        ("site.offline", "raise", "lyon"),
        ("site.offline", "clear", "lyon"),
    ]
    raise_, clear = receiver.got
    assert set(raise_) == {
        "alarm_id", "severity", "entity", "site", "state", "raised_at", "cleared_at", "reason"
    }  # fmt: skip
    assert raise_["cleared_at"] is None and clear["cleared_at"] == history["cleared_at"]
    assert raise_["raised_at"] == clear["raised_at"]


def test_a_crash_looping_process_raises_instance_crash_loop(
    fleet: tuple[LocalController, LocalAgent], receiver: Receiver
) -> None:
    ctl, _agent = fleet
    with ctl.client() as api:
        _crash_loop(ctl, api, receiver)


def _crash_loop(ctl: LocalController, api: httpx.Client, receiver: Receiver) -> None:
    wait_for(lambda: _online(api), 30, "the site online")
    app = {
        "name": "crasher",
        "components": [{"name": "main", "command": [sys.executable, "-c", "raise SystemExit(3)"]}],
        "resources": {"vcpus": 0.1, "memory_mib": 32, "disk_gib": 0.01},
    }
    api.post("/v1/apps", json=app).raise_for_status()
    created = api.post("/v1/instances", json={"app": "crasher", "name": "boom"}).json()

    def looping() -> list[dict[str, Any]]:
        return [a for a in _alarms(api, active="true") if a["alarm_id"] == "instance.crash-loop"]

    [alarm] = wait_for(looping, 60, "instance.crash-loop raised")
    assert alarm["entity"] == f"site=lyon/instance={created['id']}"
    assert alarm["instance"] == created["id"] and alarm["project"] == "admin"
    assert alarm["source"] == "site" and "restarted" in alarm["reason"]
    item = wait_for(
        lambda: (i := api.get("/v1/instances/boom").json())["crash_restarts"] >= 3 and i,
        30,
        "the restart count reported",
    )
    assert item["actual_state"] != "running"
    shown = json.loads(_cli(ctl, "alarm", "list", "--active", "--json"))
    assert [a["alarm_id"] for a in shown] == ["instance.crash-loop"]

    # Deleted: the site clears the alarm, through its outbox.
    api.delete("/v1/instances/boom").raise_for_status()
    wait_for(lambda: looping() == [], 30, "instance.crash-loop cleared")
    [history] = _alarms(api)
    assert history["cleared_at"] is not None
    wait_for(lambda: len(receiver.got) >= 2, 30, "the webhook's raise and clear")
    assert [(n["alarm_id"], n["state"]) for n in receiver.got] == [
        ("instance.crash-loop", "raise"),
        ("instance.crash-loop", "clear"),
    ]
