"""What the demo knows at one moment: the controller's view, the links, and what sites answered."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cloudlet.testbed.relay import RelayStats


@dataclass(frozen=True)
class Probe:
    """One direct answer (or failure) from a workload or a site-local API."""

    ok: bool
    text: str


@dataclass
class World:
    """Refreshed every tick by the scenario; read by the displays."""

    started: float = field(default_factory=time.monotonic)
    phase: str = "starting"
    sites: list[dict[str, Any]] = field(default_factory=list)
    instances: list[dict[str, Any]] = field(default_factory=list)
    links: dict[str, RelayStats] = field(default_factory=dict)
    #: By site name: the one-way delay its link adds each way.
    delays_ms: dict[str, float] = field(default_factory=dict)
    #: By instance id: what its endpoint answered when the demo asked it directly.
    probes: dict[str, Probe] = field(default_factory=dict)
    #: By site name: what the site's own local API says it runs.
    local: dict[str, Probe] = field(default_factory=dict)
    story: list[tuple[float, str]] = field(default_factory=list)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def site(self, name: str) -> dict[str, Any] | None:
        return next((s for s in self.sites if s["name"] == name), None)

    def instances_at(self, site: str) -> list[dict[str, Any]]:
        return [i for i in self.instances if i["site"] == site]


def seen_ago(site: dict[str, Any]) -> str:
    """``last_seen`` as "1.2s ago" (or "never")."""
    raw = site.get("last_seen")
    if not raw:
        return "never"
    when = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return f"{max(0.0, (datetime.now(UTC) - when).total_seconds()):.1f}s ago"


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "kB", "MB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


def short_bytes(n: int) -> str:
    """``12345`` as ``12.3k``: for narrow table cells."""
    value = float(n)
    for unit in ("", "k", "M"):
        if value < 1000:
            return f"{value:.0f}{unit}" if not unit else f"{value:.1f}{unit}"
        value /= 1000
    return f"{value:.1f}G"
