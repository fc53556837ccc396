"""The demo's conditions over a :class:`World`, and turning API answers into clear errors."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx

from cloudlet.demo._world import World
from cloudlet.errors import CloudletError


def all_running(world: World) -> bool:
    """Every listed instance runs and has an endpoint.

    Raises:
        CloudletError: an instance failed (no point waiting for it).
    """
    for inst in world.instances:
        if inst["actual_state"] == "failed":
            raise CloudletError(
                f"instance {inst['name']} at {inst['site']} failed: {inst.get('reason')}"
            )
    return bool(world.instances) and all(
        i["actual_state"] == "running" and i.get("endpoint") for i in world.instances
    )


def all_answering(world: World) -> bool:
    """Every listed instance answered the demo's last direct request."""
    probes = [world.probes.get(i["id"]) for i in world.instances]
    return all(p is not None and p.ok for p in probes)


def laggards(world: World) -> str:
    """The instances not running or not answering, with what is known of why."""
    out = []
    for i in world.instances:
        probe = world.probes.get(i["id"])
        if i["actual_state"] == "running" and probe is not None and probe.ok:
            continue
        reason = i.get("reason") or (probe.text if probe else None)
        why = f" ({reason})" if reason else ""
        out.append(f"{i['name']} at {i['site']} is {i['actual_state']}{why}")
    return "; ".join(out) or "no instances listed"


def parse_time(raw: str) -> datetime:
    when = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def problem(resp: httpx.Response) -> str:
    """The detail of a problem+json answer, or its status."""
    try:
        body = resp.json()
        return str(body.get("detail") or body.get("title") or resp.text)
    except ValueError:
        return f"HTTP {resp.status_code}"


def raise_for(resp: httpx.Response, what: str) -> None:
    if not resp.is_success:
        raise CloudletError(f"{what} failed: HTTP {resp.status_code}: {problem(resp)}")
