"""The real Prometheus server scrapes a real controller and a real agent; PromQL answers
about the fleet and the site."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cloudlet.compute.ports import free_port
from cloudlet.testbed.local import LocalAgent, LocalController, wait_for

pytestmark = pytest.mark.integration


def _promql(url: str, query: str) -> float | None:
    answer = httpx.get(f"{url}/api/v1/query", params={"query": query}, timeout=5).json()
    result = answer["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def _binary() -> str:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus is not installed (scripts/test installs it when run as root)")
    return binary


@contextlib.contextmanager
def _prometheus(binary: str, tmp_path: Path, scrape_configs: str) -> Iterator[str]:
    """A Prometheus server scraping every second; yields its URL."""
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(f"global:\n  scrape_interval: 1s\nscrape_configs:\n{scrape_configs}")
    log = (tmp_path / "prometheus.log").open("wb")
    server = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(10)
        log.close()


def test_prometheus_counts_the_online_sites(
    controller: LocalController, api: httpx.Client, tmp_path: Path
) -> None:
    binary = _binary()
    for name in ("lyon", "paris", "nice"):
        token = api.post("/v1/sites", json={"name": name}).json()["join_token"]["token"]
        if name != "nice":  # nice stays registered: availability unknown
            httpx.post(f"{controller.url}/v1/agent/enroll", json={"join_token": token})
    jobs = f"""
  - job_name: controller
    metrics_path: /metrics
    authorization:
      type: Bearer
      credentials: {controller.token}
    static_configs:
      - targets: ["127.0.0.1:{controller.port}"]
"""
    with _prometheus(binary, tmp_path, jobs) as url:
        online = 'sum(cloudlet_sites{availability="online"})'
        assert wait_for(lambda: _promql(url, online) == 2, 60, "Prometheus to scrape")
        assert _promql(url, 'sum(cloudlet_sites{availability="unknown"})') == 1
        assert _promql(url, 'up{job="controller"}') == 1
        requests = 'sum(cloudlet_http_request_duration_seconds_count{route="/v1/sites"})'
        assert (_promql(url, requests) or 0) >= 3


def test_prometheus_scrapes_an_agent(
    controller: LocalController, api: httpx.Client, tmp_path: Path
) -> None:
    binary = _binary()
    token = api.post("/v1/sites", json={"name": "lyon"}).json()["join_token"]["token"]
    agent = LocalAgent(
        "lyon",
        tmp_path / "lyon",
        controller.url,
        join_token=token,
        env={"CLOUDLET_AGENT__ANNOUNCE": "false"},
    ).start()
    try:
        wait_for(
            lambda: api.get("/v1/sites/lyon").json()["availability"] == "online",
            30,
            f"lyon online\n{agent.proc and agent.proc.log_tail()}",
        )
        command = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "$PORT"]
        app = {
            "name": "web",
            "components": [{"name": "main", "command": command}],
            "resources": {"vcpus": 0.1, "memory_mib": 32, "disk_gib": 0.01},
            "latency_bound_ms": 20,
        }
        api.post("/v1/apps", json=app).raise_for_status()
        api.post("/v1/instances", json={"app": "web", "name": "web-1"}).raise_for_status()
        agent_port = str(agent.local_api()).rsplit(":", 1)[1]
        jobs = f"""
  - job_name: agent
    metrics_path: /metrics
    static_configs:
      - targets: ["127.0.0.1:{agent_port}"]
"""
        with _prometheus(binary, tmp_path, jobs) as url:
            running = 'cloudlet_agent_instances{job="agent",state="running"}'
            assert wait_for(lambda: _promql(url, running) == 1, 60, "Prometheus to scrape")
            assert _promql(url, 'up{job="agent"}') == 1
            assert _promql(url, 'cloudlet_agent_instances{state="failed"}') == 0
            assert _promql(url, "cloudlet_agent_outbox_depth") is not None
            since = 'cloudlet_agent_seconds_since_last_sync{loop="report"}'
            assert 0 <= (_promql(url, since) or -1) < 30
    finally:
        agent.stop()
