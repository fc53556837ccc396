"""Sites: the small edge locations the controller manages."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated, ClassVar

from pydantic import Field
from pydantic.json_schema import SkipJsonSchema

from cloudlet.schemas._base import Input, Model, Patch
from cloudlet.schemas.common import (
    Integer,
    JsonNumber,
    LabelMap,
    Latitude,
    Longitude,
    Name,
    Resources,
    Utilization,
)


class SiteState(enum.StrEnum):
    REGISTERED = "registered"  # created, no agent enrolled yet
    ACTIVE = "active"  # an agent enrolled; availability says online/offline
    DRAINING = "draining"
    DECOMMISSIONED = "decommissioned"


class Availability(enum.StrEnum):
    UNKNOWN = "unknown"  # never seen
    ONLINE = "online"
    OFFLINE = "offline"


class SyncStatus(enum.StrEnum):
    IN_SYNC = "in-sync"  # the agent applied the latest revision
    SYNCING = "syncing"  # behind, but talking to us
    OUT_OF_SYNC = "out-of-sync"  # behind and offline


class SiteCreate(Input):
    name: Name
    region: str = Field("default", min_length=1, max_length=63)
    latitude: Latitude | None = None
    longitude: Longitude | None = None
    labels: LabelMap = Field(default_factory=dict)
    join_token_ttl_s: Integer = Field(
        3600, gt=0, le=30 * 86400, description="Lifetime of the join token created with the site."
    )


class SiteUpdate(Patch):
    """Omitted fields keep their values; ``null`` clears the coordinates and the
    access latency (back to the default model) only."""

    nullable: ClassVar[frozenset[str]] = frozenset({"latitude", "longitude", "access_latency_ms"})

    region: Annotated[str, Field(min_length=1, max_length=63)] | SkipJsonSchema[None] = None
    latitude: Latitude | None = None
    longitude: Longitude | None = None
    labels: LabelMap | SkipJsonSchema[None] = None
    access_latency_ms: Annotated[float, Field(ge=0, le=10_000), JsonNumber] | None = Field(
        None, description="Measured last-mile RTT from clients to the site."
    )


class Site(Model):
    id: str
    name: str
    region: str
    latitude: float | None
    longitude: float | None
    labels: dict[str, str]
    state: SiteState
    availability: Availability
    last_seen: datetime | None
    revision: int = Field(description="Latest revision of this site's desired state.")
    applied_revision: int = Field(description="Latest revision the agent reported applied.")
    revision_lag: int
    sync_status: SyncStatus
    bytes_in: int = Field(description="Bytes received from the agent.")
    bytes_out: int = Field(description="Bytes sent to the agent.")
    capacity: Resources | None
    utilization: Utilization | None
    instances: int = 0
    agent_version: str | None = None
    agent_target: str | None = Field(
        None, description="The agent version the site is told to run (None: any)."
    )
    created_at: datetime
    access_latency_ms: float | None = None
    local_api: str | None = Field(None, description="The site-local API clients call.")


class JoinTokenCreate(Input):
    ttl_s: Integer = Field(3600, gt=0, le=30 * 86400)


class JoinToken(Model):
    site: str
    token: str = Field(description="Shown once; hand it to the site's agent (--join).")
    expires_at: datetime


class SiteCreated(Model):
    site: Site
    join_token: JoinToken
