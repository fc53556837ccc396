"""A real agent (process driver, stub controller) answers Prometheus scrapes on its local API."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import httpx
import pytest
from agent_stub_controller import TOKEN, ServerThread, StubController
from prometheus_client.parser import text_string_to_metric_families

from cloudlet.agent import run_agent
from cloudlet.agent.local_api import PORT_FILE
from cloudlet.schemas import DesiredInstance
from cloudlet.settings import AgentSettings

pytestmark = pytest.mark.integration

HTTP_SERVER = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "$PORT"]

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def web_instance() -> DesiredInstance:
    return DesiredInstance.model_validate(
        {
            "id": "inst1",
            "name": "web-1",
            "app": "web",
            "project": "admin",
            "desired_state": "running",
            "components": [{"command": HTTP_SERVER}],
            "resources": {},
            "revision": 0,
        }
    )


async def scrape(data_dir: Path) -> Samples | None:
    """The agent's /metrics as samples, or None while it does not serve yet."""
    try:
        port = int((data_dir / PORT_FILE).read_text())
    except (OSError, ValueError):
        return None
    async with httpx.AsyncClient() as client:
        answer = await client.get(f"http://127.0.0.1:{port}/metrics")
    answer.raise_for_status()
    assert answer.headers["content-type"].startswith("text/plain; version=")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(answer.text)
        for s in family.samples
    }


def test_a_running_agent_exposes_its_instances_outbox_and_sync_age(tmp_path: Path) -> None:
    stub = StubController()
    stub.set_instance(web_instance())
    running = ("cloudlet_agent_instances", (("state", "running"),))
    since_report = ("cloudlet_agent_seconds_since_last_sync", (("loop", "report"),))
    since_pull = ("cloudlet_agent_seconds_since_last_sync", (("loop", "pull"),))

    async def main() -> Samples:
        stop = asyncio.Event()
        settings = AgentSettings(
            data_dir=tmp_path,
            controller_url=server.url,
            join_token=TOKEN,
            insecure=True,  # the stub controller speaks plain HTTP
            driver="process",
            poll_wait_s=1,
            report_interval_s=0.2,
            reconcile_interval_s=0.2,
            backoff_max_s=0.2,
            local_port=0,
            announce=False,
        )
        agent = asyncio.create_task(run_agent(settings, stop=stop))
        try:
            for _ in range(400):  # bounded polling, not a timing assertion
                got = await scrape(tmp_path)
                if got and got.get(running) == 1 and since_report in got and since_pull in got:
                    return got
                assert not agent.done(), agent
                await asyncio.sleep(0.05)
            raise AssertionError(f"never scraped a running, synced agent: {got}")
        finally:
            stop.set()
            await asyncio.wait_for(agent, 30)

    with ServerThread(stub.app) as server:
        got = asyncio.run(main())

    assert got[("cloudlet_agent_instances", (("state", "pending"),))] == 0
    assert got[("cloudlet_agent_instances", (("state", "failed"),))] == 0
    assert got[("cloudlet_agent_outbox_depth", ())] >= 0
    assert 0 <= got[since_report] < 30
    assert 0 <= got[since_pull] < 30
    assert ("cloudlet_agent_driver_errors_total", (("operation", "start"),)) not in got
    assert got[("cloudlet_agent_artifact_cache_bytes", (("kind", "image"),))] == 0
