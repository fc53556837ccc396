"""Builders for placement tests: sites and requests with sensible defaults."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cloudlet.placement import (
    Constraint,
    PlacementRequest,
    Resources,
    SiteCandidate,
    Utilization,
)

# A few real places, (latitude, longitude).
VIENNA = (48.2082, 16.3738)
MUNICH = (48.1351, 11.5820)
BERLIN = (52.5200, 13.4050)
MADRID = (40.4168, -3.7038)
SYDNEY = (-33.8688, 151.2093)


def make_site(
    name: str,
    *,
    site_id: str | None = None,
    vcpus: float = 8,
    memory_mib: int = 8192,
    disk_gib: float = 100,
    allocated: Resources | None = None,
    online: bool = True,
    state: str = "online",
    region: str | None = "eu-west",
    at: tuple[float, float] | None = None,
    labels: Mapping[str, str] | None = None,
    utilization: Utilization | None = None,
) -> SiteCandidate:
    return SiteCandidate(
        site_id=site_id or f"id-{name}",
        name=name,
        capacity=Resources(vcpus, memory_mib, disk_gib),
        allocated=allocated or Resources(),
        online=online,
        state=state,
        region=region,
        latitude=at[0] if at else None,
        longitude=at[1] if at else None,
        labels=dict(labels or {}),
        utilization=utilization,
    )


def make_request(
    *,
    app: str = "web",
    vcpus: float = 1,
    memory_mib: int = 512,
    disk_gib: float = 1,
    constraints: Sequence[str | Constraint] = (),
    latency_bound_ms: int | None = None,
    client: tuple[float, float] | None = None,
    **kwargs: Any,
) -> PlacementRequest:
    return PlacementRequest(
        app=app,
        resources=Resources(vcpus, memory_mib, disk_gib),
        constraints=constraints,
        latency_bound_ms=latency_bound_ms,
        client_latitude=client[0] if client else None,
        client_longitude=client[1] if client else None,
        **kwargs,
    )
