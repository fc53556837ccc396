"""The alarm the demo's cut raises at the controller, read from /v1/alarms, and its lines."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import httpx

from cloudlet.demo._checks import parse_time

#: The alarm the controller raises for a site it judges offline.
OFFLINE_ALARM = "site.offline"


def offline_alarms(api: httpx.Client, site: str) -> list[dict[str, Any]]:
    """Every site.offline alarm of ``site``, active or cleared, newest first."""
    resp = api.get("/v1/alarms", params={"site": site})
    resp.raise_for_status()
    return [a for a in resp.json() if a["alarm_id"] == OFFLINE_ALARM]


def _clock(raw: str) -> str:
    return parse_time(raw).strftime("%H:%M:%S")


def raised_line(alarm: dict[str, Any], cut_at: datetime) -> str:
    after = (parse_time(alarm["raised_at"]) - cut_at).total_seconds()
    return (
        f"ALARM raised: {alarm['alarm_id']} ({alarm['severity']}) for {alarm['entity']} at"
        f" {_clock(alarm['raised_at'])}, {after:.1f}s after the cut: {alarm['reason']}."
    )


def cleared_line(alarm: dict[str, Any], hold_s: float, default_hold_s: float, count: int) -> str:
    active = (parse_time(alarm["cleared_at"]) - parse_time(alarm["raised_at"])).total_seconds()
    return (
        f"ALARM cleared: {alarm['alarm_id']} for {alarm['entity']} at"
        f" {_clock(alarm['cleared_at'])}, active {active:.1f}s; it waited for the site to stay"
        f" online {hold_s:g}s (shortened for the demo; the default is {default_hold_s:g}s)."
        f" Alarms {alarm['alarm_id']} in its history: {count}"
        + (" (raised once, cleared once)." if count == 1 else ".")
    )
