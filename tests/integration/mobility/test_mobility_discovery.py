"""Discovery: the controller ranks sites for a client's position and says why; the client
measures, picks, starts or joins; without a controller it browses the LAN."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from mobility_fleet import SITES, fleet, get, stateful_app

from cloudlet import client
from cloudlet.compute.ports import free_port
from cloudlet.errors import CloudletError
from cloudlet.testbed.local import wait_for

pytestmark = pytest.mark.integration


def test_discover_ranks_with_reasons_and_the_client_connects(tmp_path: Path) -> None:
    with fleet(tmp_path, ["lyon", "paris", "turin"]) as f:
        f.api.post("/v1/apps", json=stateful_app(tmp_path, latency_bound_ms=20)).raise_for_status()
        # Paris's measured last mile is slow: its estimate leaves the 20 ms bound.
        f.api.patch("/v1/sites/paris", json={"access_latency_ms": 50}).raise_for_status()
        for name, agent in f.agents.items():
            wait_for(
                lambda n=name, a=agent: (
                    f.api.get(f"/v1/sites/{n}").json()["local_api"] == a.local_api()
                ),
                30,
                f"{name} reporting its local API",
            )
        lat, lon = SITES["lyon"]
        # No token: discovery is open to clients.
        answer = httpx.get(
            f"{f.controller.url}/v1/discover",
            params={"app": "notes", "lat": lat, "lon": lon},
            verify=f.controller.verify,
        )
        assert answer.status_code == 200, answer.text
        found = answer.json()
        assert [s["site"] for s in found["sites"]] == ["lyon", "turin"]
        lyon, turin = found["sites"]
        assert lyon["distance_km"] == 0 and lyon["estimated_rtt_ms"] == pytest.approx(5.0)
        assert turin["distance_km"] == pytest.approx(250, rel=0.1)
        assert turin["estimated_rtt_ms"] > lyon["estimated_rtt_ms"]
        assert lyon["endpoint"] == f.agents["lyon"].local_api()
        assert lyon["cache"] == "none" and lyon["missing_bytes"] == 0
        assert lyon["expected_first_response_s"] > 0 and 0 <= lyon["load"] <= 1
        assert set(lyon["weighers"]) >= {"load", "proximity", "warmth"}
        (paris,) = found["rejected"]
        assert paris["site"] == "paris" and paris["filter"] == "latency"
        assert "est. 53.9 ms" in paris["reason"]  # 3.9 ms of geography, 50 of access
        url = f"{f.controller.url}/v1/discover"
        assert httpx.get(url, params={"app": "nope"}, verify=f.controller.verify).status_code == 404
        assert httpx.get(
            url, params={"app": "notes", "lat": 1}, verify=f.controller.verify
        ).status_code in (400, 422)

        # No instance anywhere: connect measures the ranked sites, picks the lowest
        # measured RTT (on loopback any of them may win) and has the controller start it.
        ca = f.controller.verify  # the controller and every site-local API chain to it
        conn = client.connect(
            f.controller.url, "notes", lat, lon, token=f.controller.token, verify=ca
        )
        assert {c.site for c in conn.candidates} == {"lyon", "turin"}
        measured = {c.site: c.measured_rtt_ms for c in conn.candidates}
        assert None not in measured.values()
        assert conn.site == min(measured, key=lambda n: measured[n]) and not conn.joined
        assert f.instance(conn.instance)["site"] == conn.site
        assert get(conn.endpoint, set="hello").startswith("hello")
        # A second client joins the running instance instead of starting another.
        again = client.connect(f.controller.url, "notes", lat, lon, verify=ca)
        assert again.joined and again.endpoint == conn.endpoint
        assert len(f.api.get("/v1/instances").json()) == 1

        # The CLI shows the same ranking with what it measured.
        out = subprocess.run(
            [sys.executable, "-m", "cloudlet.cli", "--url", f.controller.url, "client",
             "discover", "notes", "--near", f"{lat},{lon}", "--json"],
            capture_output=True, text=True, timeout=60, check=True,
            env={**os.environ, **f.controller.cli_env()},
        )  # fmt: skip
        rows = json.loads(out.stdout)
        # (The ranking may change now that one site runs the app: its load, its timings.)
        assert sorted((r["rank"], r["site"]) for r in rows)[0][0] == 1
        assert {r["site"] for r in rows} == {"lyon", "turin"}
        (serving,) = [r for r in rows if r["site"] == conn.site]
        assert serving["details"]["running"] == [conn.endpoint]
        assert all(r["measured_rtt_ms"] is not None for r in rows)
        times = [r["measured_rtt_ms"] for r in rows]
        assert times == sorted(times)


def test_without_a_controller_the_client_browses_the_lan(tmp_path: Path) -> None:
    with fleet(tmp_path, ["lyon"], announce=True) as f:
        lyon = f.agents["lyon"]
        wait_for(lyon.health, 30, "lyon's health")
        try:
            wait_for(lambda: lyon.health()["announced"], 10, "the DNS-SD announcement")
        except CloudletError:
            pytest.skip("multicast DNS does not work here")
        dead = f"http://127.0.0.1:{free_port()}"
        found = client.candidates(dead, "notes", browse_s=3, verify=f.controller.verify)
        # Other agents on this LAN (other test runs) may answer too: find ours by address.
        ours = [c for c in found if c.endpoint == lyon.local_api()]
        assert ours, found
        assert ours[0].source == "dns-sd" and ours[0].site.startswith("lyon")
        assert ours[0].measured_rtt_ms is not None
