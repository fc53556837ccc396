"""An instance a site started for a client token while cut off from the controller cannot
have been refused by it: when it arrives it counts in the project's usage, the quota
shows the project over its limit, nothing is deleted, and the controller refuses new
instances until the project is under again. A real controller and agent."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloudlet.testbed.local import LocalAgent, LocalController, wait_for

pytestmark = pytest.mark.integration


def _app(tmp_path: Path) -> dict[str, Any]:
    script = tmp_path / "serve.py"
    script.write_text(
        "import http.server, os\n"
        "http.server.HTTPServer(('127.0.0.1', int(os.environ['PORT'])),"
        " http.server.BaseHTTPRequestHandler).serve_forever()\n"
    )
    return {
        "name": "maps",
        "components": [{"name": "main", "command": [sys.executable, str(script)]}],
        "resources": {"vcpus": 0.1, "memory_mib": 32, "disk_gib": 0.01},
    }


def _client_token(controller: LocalController, member: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDLET_")}
    env |= {**controller.cli_env(), "CLOUDLET_TOKEN": member}
    done = subprocess.run(
        [sys.executable, "-m", "cloudlet.cli", "client", "token", "create",
         "--project", "fire", "--app", "maps"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_an_instance_started_offline_is_counted_shown_over_and_kept(tmp_path: Path) -> None:
    controller = LocalController(tmp_path / "controller").start()
    agent = None
    try:
        member = controller.create_token("fire-ops", project="fire", role="member")
        with controller.client() as admin:
            join = admin.post("/v1/sites", json={"name": "lyon"}).json()["join_token"]["token"]
            admin.put("/v1/projects/fire/quota", json={"instances": 1}).raise_for_status()
        agent = LocalAgent(
            "lyon", tmp_path / "lyon", controller.url, join,
            extra_args=["--local-host", "0.0.0.0"], env={"CLOUDLET_AGENT__ANNOUNCE": "false"},
        ).start()  # fmt: skip
        url = wait_for(agent.local_api, 30, "the site-local API")
        with controller.client(member) as fire:
            fire.post("/v1/apps", json=_app(tmp_path)).raise_for_status()
            # The project's one instance; it also gives the site the app's definition.
            fire.post("/v1/instances", json={"app": "maps", "site": "lyon"}).raise_for_status()
            refused = fire.post("/v1/instances", json={"app": "maps", "site": "lyon"})
            assert refused.status_code == 403 and refused.json()["quota"] == "instances"
        token = _client_token(controller, member)

        def holds_maps() -> bool:
            answer = httpx.get(f"{url}/v1/local/instances", verify=agent.verify)
            return any(i["app"] == "maps" for i in answer.json())

        wait_for(holds_maps, 30, "the site holding maps")

        controller.stop()
        wait_for(lambda: agent.health()["controller_reachable"] is False, 30, "cut off")
        started = httpx.post(
            f"{url}/v1/local/instances", json={"app": "maps", "name": "tablet-maps"},
            headers={"authorization": f"Bearer {token}"}, timeout=10, verify=agent.verify,
        )  # fmt: skip
        assert started.status_code == 202, started.text
        offline_id = started.json()["id"]

        controller.start()
        with controller.client(member) as fire:
            quota = wait_for(
                lambda: (q := fire.get("/v1/projects/fire/quota").json())["usage"]["instances"]
                == 2 and q,
                30, "the site-started instance counted",
            )  # fmt: skip
            assert quota["limits"]["instances"] == 1 and quota["over"] == ["instances"]
            body = fire.post("/v1/instances", json={"app": "maps", "site": "lyon"}).json()
            assert body["type"].endswith("/quota-exceeded"), body
            assert body["detail"] == "project fire: quota instances 1, in use 2, asked 1"

            # Kept: the controller wants it running, and the site, synced, still runs it.
            shown = fire.get(f"/v1/instances/{offline_id}").json()
            assert (shown["origin"], shown["desired_state"]) == ("site", "running")
            with controller.client() as admin:

                def synced() -> bool:
                    site = admin.get("/v1/sites/lyon").json()
                    return site["applied_revision"] == site["revision"]

                wait_for(synced, 30, "the site applying its desired state")
            local = httpx.get(
                f"{url}/v1/local/instances/{offline_id}", timeout=5, verify=agent.verify
            ).json()
            assert local["state"] == "running", local
    finally:
        if agent is not None:
            agent.stop()
        controller.stop()
