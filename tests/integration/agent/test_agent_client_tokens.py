"""Client tokens end to end: the controller signs one, the controller goes away, and the
site still starts the app for it (metered to its project) and refuses every bad one.
A real controller, a real agent, the real CLI; the site-local API beyond loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloudlet.testbed.local import LocalAgent, LocalController, wait_for
from cloudlet.tokens import SigningKey

pytestmark = pytest.mark.integration


def _app(tmp_path: Path, name: str) -> dict[str, Any]:
    script = tmp_path / "serve.py"
    script.write_text(
        textwrap.dedent(
            """
            import http.server, os
            http.server.HTTPServer(
                ("127.0.0.1", int(os.environ["PORT"])), http.server.BaseHTTPRequestHandler
            ).serve_forever()
            """
        )
    )
    return {
        "name": name,
        "components": [{"name": "main", "command": [sys.executable, str(script)]}],
        "resources": {"vcpus": 0.1, "memory_mib": 32, "disk_gib": 0.01},
    }


def _cli(controller: LocalController, token: str, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDLET_")}
    env |= {**controller.cli_env(), "CLOUDLET_TOKEN": token}
    done = subprocess.run(
        [sys.executable, "-m", "cloudlet.cli", *args], capture_output=True, text=True, env=env,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _refused(local: httpx.Client, token: str | None, status: int, kind: str) -> None:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    r = local.post("/v1/local/instances", json={"app": "maps"}, headers=headers, timeout=10)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["type"].endswith(f"/{kind}"), r.json()


def test_a_site_checks_client_tokens_with_the_controller_down(tmp_path: Path) -> None:
    controller = LocalController(tmp_path / "controller").start()
    agent = None
    stack = ExitStack()
    try:
        member = controller.create_token("fire-ops", project="fire", role="member")
        with controller.client() as admin:
            join = admin.post("/v1/sites", json={"name": "lyon"}).json()["join_token"]["token"]
        agent = LocalAgent(
            "lyon", tmp_path / "lyon", controller.url, join,
            extra_args=["--local-host", "0.0.0.0"],
            env={"CLOUDLET_AGENT__USAGE_INTERVAL_S": "0.5", "CLOUDLET_AGENT__ANNOUNCE": "false"},
        ).start()  # fmt: skip
        url = wait_for(agent.local_api, 30, "the site-local API")
        wait_for(lambda: (agent.health() or {}).get("enrolled"), 30, "the agent's enrollment")
        # HTTPS, verified against the CA the site pinned at join.
        local = stack.enter_context(httpx.Client(base_url=url, verify=agent.verify))
        with controller.client(member) as fire:
            for name in ("maps", "radio"):
                fire.post("/v1/apps", json=_app(tmp_path, name)).raise_for_status()
            # The site learns the app's definition from an instance placed there.
            fire.post("/v1/instances", json={"app": "maps", "site": "lyon"}).raise_for_status()
            # A member mints for its own project only; an app the project lacks is a 404.
            body = {"project": "admin", "apps": ["maps"]}
            assert fire.post("/v1/client-tokens", json=body).status_code == 403
            body = {"project": "fire", "apps": ["maps", "nope"]}
            assert fire.post("/v1/client-tokens", json=body).status_code == 404
        with controller.client() as api:
            keys = api.get("/v1/client-tokens/keys").json()["keys"]
        assert [k["crv"] for k in keys] == ["Ed25519"]

        good = _cli(controller, member, "client", "token", "create", "--project", "fire",
                    "--app", "maps", "--ttl", "1h", "--subject", "tablet-7")  # fmt: skip
        radio_only = _cli(controller, member, "client", "token", "create", "--project", "fire",
                          "--app", "radio")  # fmt: skip
        # One the controller signed two hours ago with a one-hour life.
        key = SigningKey.from_pem((controller.data_dir / "client-token.key").read_bytes())
        expired, _ = key.sign("fire", ["maps"], 3600, now=time.time() - 7200)
        head, payload, sig = good.split(".")
        tampered = f"{head}.{payload[:-2]}{'AB' if payload[-2:] != 'AB' else 'CD'}.{sig}"

        def holds_the_definition() -> bool:
            return any(i["app"] == "maps" for i in local.get("/v1/local/instances").json())

        wait_for(holds_the_definition, 30, f"the site holding maps\n{agent.proc.log_tail()}")
        assert agent.health()["client_token_keys"] == [k["kid"] for k in keys]

        # A lost tablet's token, revoked by its project before the link goes down.
        lost = _cli(controller, member, "client", "token", "create", "--project", "fire",
                    "--app", "maps", "--subject", "lost-tablet")  # fmt: skip
        listed = json.loads(_cli(controller, member, "client", "token", "list", "--json"))
        lost_jti = next(t["jti"] for t in listed if t["subject"] == "lost-tablet")
        with controller.client() as admin:
            before = admin.get("/v1/sites/lyon").json()["revision"]
            assert "revoked" in _cli(controller, member, "client", "token", "revoke", lost_jti)

            def applied() -> bool:
                site = admin.get("/v1/sites/lyon").json()
                return site["revision"] > before and site["applied_revision"] == site["revision"]

            wait_for(applied, 30, "the site applying the revocation")
        controller.stop()
        wait_for(lambda: agent.health()["controller_reachable"] is False, 30, "cut off")

        _refused(local, None, 401, "auth")
        _refused(local, expired, 401, "token-expired")
        _refused(local, tampered, 401, "auth")
        _refused(local, radio_only, 403, "forbidden")
        _refused(local, lost, 401, "token-revoked")

        started = local.post("/v1/local/instances", json={"app": "maps", "name": "tablet-maps"},
            headers={"authorization": f"Bearer {good}"}, timeout=10,
        )  # fmt: skip
        assert started.status_code == 202, started.text
        assert started.json()["project"] == "fire" and started.json()["origin"] == "site"
        instance_id = started.json()["id"]

        def running() -> dict[str, Any] | None:
            got = local.get(f"/v1/local/instances/{instance_id}", timeout=5).json()
            return got if got["state"] == "running" else None

        assert wait_for(running, 30, "the token's instance running")["project"] == "fire"
        time.sleep(1.5)  # a few usage intervals while the controller is away

        # Back online: the instance and its usage reach the controller as project fire's.
        controller.start()
        with controller.client(member) as fire:

            def usage() -> list[dict[str, Any]]:
                params = {"instance": instance_id, "kind": "usage"}
                return fire.get("/v1/events", params=params).json()

            records = wait_for(usage, 30, "usage records at the controller")
            assert {r["data"]["project"] for r in records} == {"fire"}
            shown = wait_for(
                lambda: fire.get(f"/v1/instances/{instance_id}").json().get("project"),
                30, "the site-started instance adopted",
            )  # fmt: skip
            assert shown == "fire"
    finally:
        stack.close()
        if agent is not None:
            agent.stop()
        controller.stop()
