"""What the demo builds: three sites at real places and the two sample apps."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

from cloudlet.demo.apps import FIRE_WATCH, WASTE_ROUTE


@dataclass(frozen=True)
class SiteSpec:
    name: str
    region: str
    latitude: float
    longitude: float
    labels: dict[str, str] = field(default_factory=dict)
    #: One-way delay the site's relay adds each way, standing for its WAN distance.
    link_delay_ms: float = 0.0

    def body(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "region": self.region,
            "latitude": self.latitude,
            "longitude": self.longitude,
            "labels": self.labels,
        }


# The controller stands in Paris; the delays are rough one-way fibre latencies from there.
SITES = (
    SiteSpec("lyon", "fr-ara", 45.76, 4.84, {"city": "Lyon", "tier": "metro"}, 4.0),
    SiteSpec(
        "marseille",
        "fr-pac",
        43.30,
        5.37,
        {"city": "Marseille", "tier": "metro", "risk": "wildfire"},
        7.0,
    ),
    SiteSpec(
        "grenoble",
        "fr-ara",
        45.19,
        5.72,
        {"city": "Grenoble", "tier": "edge", "risk": "wildfire"},
        5.0,
    ),
)

#: The site whose link the demo cuts: it runs a fire-watch instance.
CUT_SITE = "marseille"

FIRE_WATCH_APP = "fire-watch"
WASTE_ROUTE_APP = "waste-route"

#: Agent timings tuned for a quick demo (a real site keeps the defaults).
AGENT_CONFIG = """\
[agent]
usage_interval_s = 2.0
reconcile_interval_s = 1.0
poll_wait_s = 5.0
backoff_max_s = 2.0
"""


def app_bodies() -> list[dict[str, Any]]:
    """The two use cases: a real-time service and a batch worker, both run by this Python."""
    small = {"vcpus": 1, "memory_mib": 64, "disk_gib": 1}
    return [
        {
            "name": FIRE_WATCH_APP,
            "description": "Real-time wildfire risk from local weather sensors (HTTP, JSON).",
            "components": [
                {
                    "name": "main",
                    "kind": "process",
                    "command": [sys.executable, str(FIRE_WATCH)],
                    "env": {"FIRE_WATCH_ZONE": "south-east France"},
                }
            ],
            "resources": small,
            "latency_bound_ms": 20,
            "labels": {"use-case": "real-time"},
            "constraints": ["label:risk==wildfire"],
        },
        {
            "name": WASTE_ROUTE_APP,
            "description": "Batch planning of waste collection rounds over full bins.",
            "components": [
                {
                    "name": "main",
                    "kind": "process",
                    "command": [sys.executable, str(WASTE_ROUTE)],
                    "env": {"WASTE_ROUTE_INTERVAL_S": "3", "WASTE_ROUTE_DEPOT": "45.76,4.84"},
                }
            ],
            "resources": small,
            "latency_bound_ms": 3_600_000,
            "labels": {"use-case": "batch"},
            "constraints": [],
        },
    ]


#: Instances the demo asks for: (app, site or None to let placement choose, client position).
INSTANCES: tuple[tuple[str, str | None, tuple[float, float] | None], ...] = (
    (FIRE_WATCH_APP, "marseille", None),
    (FIRE_WATCH_APP, "grenoble", None),
    (WASTE_ROUTE_APP, None, (45.75, 4.85)),
)
