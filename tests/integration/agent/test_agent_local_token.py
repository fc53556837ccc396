"""The site-local API beyond loopback: starting and stopping instances needs the
site-local token; reading does not (a real controller and agent process)."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from cloudlet.testbed.local import LocalAgent, LocalController, wait_for

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("bind", ["0.0.0.0", "127.0.0.1"])
def test_writes_need_the_token_only_beyond_loopback(tmp_path: Path, bind: str) -> None:
    controller = LocalController(tmp_path / "controller").start()
    agent = None
    stack = ExitStack()
    try:
        with controller.client() as api:
            join = api.post("/v1/sites", json={"name": "lyon"}).json()["join_token"]["token"]
        agent = LocalAgent(
            "lyon", tmp_path / "lyon", controller.url, join, extra_args=["--local-host", bind]
        ).start()
        url = wait_for(agent.local_api, 30, "the site-local API")
        wait_for(lambda: (agent.health() or {}).get("enrolled"), 30, "the agent's enrollment")
        # HTTPS, verified against the CA the site pinned at join.
        local = stack.enter_context(httpx.Client(base_url=url, verify=agent.verify))
        token_file = agent.data_dir / "local-api.token"
        start = {"app": "nope"}

        assert local.get("/v1/local/instances").status_code == 200  # reads stay open
        if bind == "127.0.0.1":
            assert not token_file.exists()
            assert local.post("/v1/local/instances", json=start).status_code == 404
            return
        token = token_file.read_text().strip()
        assert token_file.stat().st_mode & 0o777 == 0o600
        for headers in ({}, {"authorization": "Bearer clt_local_wrong"}):
            refused = local.post("/v1/local/instances", json=start, headers=headers)
            assert refused.status_code == 401, refused.text
            assert refused.headers["content-type"].startswith("application/problem+json")
            assert refused.json()["type"].endswith("/auth")
            gone = local.delete("/v1/local/instances/x", headers=headers)
            assert gone.status_code == 401
        good = {"authorization": f"Bearer {token}"}
        # Past the token check, the request meets the site's own rules (no such app here).
        assert local.post("/v1/local/instances", json=start, headers=good).status_code == 404
        assert local.delete("/v1/local/instances/x", headers=good).status_code == 404
    finally:
        stack.close()
        if agent is not None:
            agent.stop()
        controller.stop()
