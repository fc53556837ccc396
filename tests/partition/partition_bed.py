"""What every partition scenario shares: the WAN testbed, one app, and the invariant checks."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from cloudlet.testbed.invariants import EventTally, UsageTally, check_events, check_usage, converge
from cloudlet.testbed.local import wait_for
from cloudlet.testbed.netns import run
from cloudlet.testbed.wan import HELLO_APP as APP
from cloudlet.testbed.wan import Wan, WanSite


def require_root_tools() -> None:
    """The testbed needs root and ip/tc/nft; say so plainly instead of skipping."""
    if os.geteuid() != 0:
        raise RuntimeError("the partition suite needs root (network namespaces, tc, nftables)")
    for tool in ("ip", "tc", "nft"):
        run("sh", "-c", f"command -v {tool}")


@dataclass
class Bed:
    """A WAN testbed with the app registered, and the checks scenarios run."""

    wan: Wan
    tmp: Path

    @property
    def api(self) -> httpx.Client:
        return self.wan.api

    @property
    def controller_db(self) -> Path:
        assert self.wan.controller is not None
        return self.wan.controller.data_dir / "controller.db"

    def site(self, name: str, **kwargs: Any) -> WanSite:
        site = self.wan.add_site(name, **kwargs)
        self.wan.wait_online(name)
        return site

    # -- instances ----------------------------------------------------------------------

    def create_at_controller(self, site: WanSite, name: str) -> str:
        made = self.api.post("/v1/instances", json={"app": APP, "site": site.name, "name": name})
        assert made.status_code == 201, made.text
        return made.json()["id"]

    def create_at_site(self, site: WanSite, name: str) -> str:
        """Start the app at the site's local API, once the site holds its definition (it
        comes with the first instance the controller placed there)."""

        def made() -> httpx.Response | None:
            with site.local() as local:
                answer = local.post("/v1/local/instances", json={"app": APP, "name": name})
            held = not (answer.status_code == 404 and "holds no definition" in answer.text)
            return answer if held else None

        answer = wait_for(made, 30, f"{site.name} to hold the app's definition")
        assert answer.status_code == 202, answer.text
        return answer.json()["id"]

    def local_states(self, site: WanSite) -> dict[str, dict[str, Any]]:
        """The site's own view (over its LAN): id -> instance."""
        with site.local() as local:
            return {i["id"]: i for i in local.get("/v1/local/instances").json()}

    def wait_local_running(self, site: WanSite, ids: Iterable[str], timeout: float = 30) -> dict:
        want = set(ids)

        def running() -> dict[str, Any] | None:
            states = self.local_states(site)
            ok = all(states.get(i, {}).get("state") == "running" for i in want)
            return {i: states[i] for i in want} if ok else None

        log = site.agent.proc.log_tail() if site.agent.proc else ""
        return wait_for(running, timeout, f"{sorted(want)} running at {site.name}\n{log}")

    def controller_states(self, site: WanSite) -> dict[str, str]:
        items = self.api.get("/v1/instances", params={"site": site.name}).json()
        return {i["id"]: i["actual_state"] for i in items}

    # -- invariants ---------------------------------------------------------------------

    def converge(self, site: WanSite, running: Iterable[str], since: float, timeout: float = 60):
        return converge(
            lambda: self.wan.site_view(site.name),
            lambda: self.controller_states(site),
            running,
            since=since,
            timeout=timeout,
        )

    def check(
        self, site: WanSite, allowed_gaps: Iterable[tuple[float, float]] = ()
    ) -> tuple[EventTally, UsageTally]:
        """Assert the event and usage invariants for ``site`` once it has drained."""
        wait_for(lambda: _drained(site), 30, f"{site.name}'s outbox to drain")
        events = check_events(site.agent.data_dir / "agent.db", self.controller_db, site.name)
        assert events.ok(), events
        assert events.delivered > 0
        usage = check_usage(self.controller_db, site.name, allowed_gaps)
        assert usage.ok(), usage
        return events, usage

    def site_events(self, site: WanSite) -> list[dict[str, Any]]:
        events = self.api.get("/v1/events", params={"site": site.name, "limit": 10_000}).json()
        return [e for e in events if e["seq"] > 0]

    def usage_within(self, site: WanSite, start: float, end: float) -> float:
        """Instance-seconds the controller holds inside ``start``..``end`` (epoch)."""
        total = 0.0
        for e in self.site_events(site):
            if e["kind"] == "usage":
                a = datetime.fromisoformat(e["data"]["start"]).timestamp()
                b = datetime.fromisoformat(e["data"]["end"]).timestamp()
                total += max(0.0, min(b, end) - max(a, start))
        return round(total, 3)


def _drained(site: WanSite) -> bool:
    health = site.agent.health()
    return health is not None and health["outbox_depth"] <= 1  # usage keeps trickling in


def now() -> float:
    return time.time()
