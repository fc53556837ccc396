"""Mobility on the wire: client positions, moves (handoffs), and discovery answers.

An instance's ``epoch`` counts its moves; the controller bumps it on every
handoff, failover or rebalance, and agents run an instance only at the epoch in
their desired state (see docs/mobility.md).
"""

from __future__ import annotations

import enum
from datetime import datetime

from pydantic import Field

from cloudlet.schemas._base import Input, Model
from cloudlet.schemas.common import Name


class HandoffRole(enum.StrEnum):
    SOURCE = "source"  # stop, send the state, let go
    DESTINATION = "destination"  # take the state in, then start


class HandoffPhase(enum.StrEnum):
    REQUESTED = "requested"  # the source (process) or destination (vm) was told
    READY = "ready"  # vm: the destination listens for the VM; the source sends it
    TRANSFERRED = "transferred"  # the state reached the controller; the destination owns it
    DONE = "done"  # running at the destination
    FAILED = "failed"  # given up; the instance stays (or is restarted) at the source


class HandoffOrder(Model):
    """What a site must do for a move in progress (part of a desired instance)."""

    id: str
    role: HandoffRole
    peer_site: str = Field(description="The other site's name.")
    kind: str = Field("process", description="process (state directory) or vm (live).")
    address: str | None = Field(None, description="vm, source: where the destination listens.")
    token: str | None = Field(None, description="vm: the one-time transfer token.")
    relay: str | None = Field(
        None,
        description="vm: host:port of the controller's relay, where both sites meet when "
        "the source cannot reach the destination; an empty host (`:8081`) means the host "
        "the agent reaches the controller at.",
    )


class ClientPosition(Input):
    """Where the client an instance serves is now."""

    latitude: float = Field(ge=-90, le=90)
    longitude: float = Field(ge=-180, le=180)


class HandoffReady(Input):
    address: str = Field(max_length=255, description="host:port the destination listens on.")


class HandoffSent(Input):
    bytes: int = Field(ge=0)
    downtime_s: float = Field(ge=0)
    rounds: int = Field(ge=0)


class InstanceMove(Input):
    to: Name = Field(description="The destination site's name.")


class Handoff(Model):
    id: str
    instance: str
    source: str
    destination: str
    kind: str = Field(description="process (stop, copy, start) or relocate (no state moves).")
    phase: HandoffPhase
    reason: str | None
    epoch: int = Field(description="The epoch the instance has at the destination.")
    bytes: int = Field(description="State bytes sent from source to destination.")
    phases: dict[str, float] = Field(
        default_factory=dict, description="Seconds from the request to each phase reached."
    )
    created_at: datetime
    finished_at: datetime | None


class Cache(enum.StrEnum):
    WARM = "warm"  # every base and overlay of the app is at the site
    PARTIAL = "partial"
    COLD = "cold"
    NONE = "none"  # the app needs no artifacts (process components)


class DiscoveredSite(Model):
    """One site able to serve the app, and why it ranks where it does."""

    site: str
    rank: int
    score: float
    distance_km: float | None
    estimated_rtt_ms: float | None
    access_latency_ms: float
    load: float = Field(description="Fraction of the site's capacity allocated (0..1+).")
    cache: Cache
    missing_bytes: int = Field(description="Artifact bytes the site would still fetch.")
    expected_first_response_s: float
    endpoint: str | None = Field(description="The site-local API a client should call.")
    running: list[str] = Field(
        default_factory=list, description="Endpoints of instances of the app already running."
    )
    weighers: dict[str, float] = Field(default_factory=dict)


class RejectedSite(Model):
    site: str
    filter: str
    reason: str


class Discovery(Model):
    app: str
    latitude: float | None
    longitude: float | None
    latency_bound_ms: int | None
    sites: list[DiscoveredSite]
    rejected: list[RejectedSite] = Field(description="The first rejected sites, with why.")
    rejected_count: int
    elapsed_ms: float = Field(description="Time the controller took to answer.")
