"""The real Prometheus server scrapes a real controller; PromQL answers about the fleet."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from cloudlet.compute.ports import free_port
from cloudlet.testbed.local import LocalController, wait_for

pytestmark = pytest.mark.integration


def _promql(url: str, query: str) -> float | None:
    answer = httpx.get(f"{url}/api/v1/query", params={"query": query}, timeout=5).json()
    result = answer["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def test_prometheus_counts_the_online_sites(
    controller: LocalController, api: httpx.Client, tmp_path: Path
) -> None:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus is not installed (scripts/test installs it when run as root)")
    for name in ("lyon", "paris", "nice"):
        token = api.post("/v1/sites", json={"name": name}).json()["join_token"]["token"]
        if name != "nice":  # nice stays registered: availability unknown
            httpx.post(f"{controller.url}/v1/agent/enroll", json={"join_token": token})
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        f"""
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: controller
    metrics_path: /metrics
    authorization:
      type: Bearer
      credentials: {controller.token}
    static_configs:
      - targets: ["127.0.0.1:{controller.port}"]
"""
    )
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
    url = f"http://127.0.0.1:{port}"
    try:
        online = 'sum(cloudlet_sites{availability="online"})'
        assert wait_for(lambda: _promql(url, online) == 2, 60, "Prometheus to scrape")
        assert _promql(url, 'sum(cloudlet_sites{availability="unknown"})') == 1
        assert _promql(url, 'up{job="controller"}') == 1
        requests = 'sum(cloudlet_http_request_duration_seconds_count{route="/v1/sites"})'
        assert (_promql(url, requests) or 0) >= 3
    finally:
        server.terminate()
        server.wait(10)
        log.close()
