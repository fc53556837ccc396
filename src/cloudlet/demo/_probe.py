"""Asking sites and workloads directly, the way a local client would (never via the controller)."""

from __future__ import annotations

import time
from typing import Any

import httpx

from cloudlet.demo._plan import FIRE_WATCH_APP, WASTE_ROUTE_APP
from cloudlet.demo._world import Probe

TIMEOUT_S = 1.0


def _url(endpoint: str) -> str:
    return endpoint if "://" in endpoint else f"http://{endpoint}"


def summarize(app: str, body: dict[str, Any]) -> str:
    """One line saying what a sample app answered."""
    if app == FIRE_WATCH_APP:
        worst = min(body["sensors"], key=lambda r: r["index"])
        return (
            f"risk {body['level']}, Angström {body['min_index']:.2f}"
            f" ({worst['temp_c']}°C, {worst['humidity_pct']:.0f}% RH)"
        )
    if app == WASTE_ROUTE_APP:
        if "km" not in body:
            return "first round not planned yet"
        return f"round {body['round']}: {body['bins_full']} full bins, {body['km']} km"
    return "answered"


def probe_instance(http: httpx.Client, instance: dict[str, Any]) -> Probe:
    """GET the instance's endpoint and summarize the answer, with the time it took."""
    endpoint = instance.get("endpoint")
    if not endpoint:
        return Probe(False, "no endpoint yet")
    start = time.perf_counter()
    try:
        resp = http.get(_url(endpoint) + "/", timeout=TIMEOUT_S)
        resp.raise_for_status()
        text = summarize(instance["app"], resp.json())
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        return Probe(False, f"no answer ({type(exc).__name__})")
    return Probe(True, f"{text}, {(time.perf_counter() - start) * 1000:.1f} ms")


def probe_local_api(http: httpx.Client, url: str | None) -> tuple[Probe, dict[str, Any]]:
    """What the site's own API says: "2/2 running, outbox 3" (events not yet delivered).

    Returns:
        The summary, and the agent's /healthz body ({} when it did not answer).
    """
    if url is None:
        return Probe(False, "not up yet"), {}
    try:
        resp = http.get(f"{url}/v1/local/instances", timeout=TIMEOUT_S)
        resp.raise_for_status()
        rows = resp.json()
        answer = http.get(f"{url}/healthz", timeout=TIMEOUT_S)
        answer.raise_for_status()
        health = answer.json()
    except (httpx.HTTPError, ValueError) as exc:
        return Probe(False, f"no answer ({type(exc).__name__})"), {}
    running = sum(1 for r in rows if r.get("state") == "running")
    depth = health.get("outbox_depth")
    return Probe(True, f"{running}/{len(rows)} running, outbox {depth}"), health
