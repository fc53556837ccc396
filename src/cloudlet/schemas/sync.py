"""The controller <-> agent protocol: enrollment, desired state, reports.

Desired state flows down by cursor: ``GET /v1/agent/desired?since=REV&wait=S``
answers a delta (every instance changed after REV, deletions included) or a
full snapshot when REV is unknown to the controller (too old, or ahead after a
restore). Actual state and events flow up in ``POST /v1/agent/report``; events
carry a per-site sequence number and are stored once per (site, seq); the answer
acknowledges the highest sequence stored so the agent can drop it.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from cloudlet.schemas._base import Input, Model
from cloudlet.schemas.apps import Component
from cloudlet.schemas.artifacts import CachedImage
from cloudlet.schemas.common import Resources, Utilization
from cloudlet.schemas.events import EventKind
from cloudlet.schemas.instances import ActualState, DesiredState, InstanceOrigin
from cloudlet.schemas.mobility import HandoffOrder


class EnrollRequest(Input):
    join_token: str = Field(min_length=8, max_length=200)
    agent_version: str = Field("unknown", max_length=64)
    capacity: Resources | None = None


class EnrollResponse(Model):
    site_id: str
    site_name: str
    credential: str = Field(description="The site's bearer secret; shown once.")
    revision: int


class DesiredInstance(Model):
    """One instance as the controller wants it, with all the agent needs to run it."""

    id: str
    name: str
    app: str
    project: str
    desired_state: DesiredState
    components: list[Component]
    resources: Resources
    revision: int = Field(description="Site revision at which this entry last changed.")
    epoch: int = Field(0, ge=0, description="The instance's move count: run it only at this one.")
    handoff: HandoffOrder | None = Field(None, description="A move in progress, if any.")
    relocatable: bool = Field(False, description="The controller may restart it elsewhere.")


class DesiredStateDoc(Model):
    """The answer to a desired-state pull."""

    site: str
    revision: int = Field(description="The site's revision this answer brings the agent to.")
    full: bool = Field(description="True: a snapshot replacing everything the agent holds.")
    since: int = Field(description="The cursor this delta starts from (ignored when full).")
    instances: list[DesiredInstance] = Field(
        description="Full: every live instance. Delta: every entry changed after `since`; "
        "deleted ones carry desired_state=deleted."
    )
    images: list[str] = Field(
        default_factory=list,
        description="Digests of the base images the site should hold (always the full list).",
    )


class OutboxEvent(Input):
    seq: int = Field(gt=0)
    kind: EventKind
    instance: str | None = None
    at: datetime
    data: dict[str, object] = Field(default_factory=dict)


class ActualInstance(Input):
    id: str
    name: str
    app: str
    project: str
    origin: InstanceOrigin = InstanceOrigin.CONTROLLER
    state: ActualState
    endpoint: str | None = None
    reason: str | None = None
    timings: dict[str, float] = Field(default_factory=dict)
    updated_at: datetime
    epoch: int = Field(0, ge=0, description="The epoch the site runs this instance at.")


class AgentReport(Input):
    """A heartbeat: the agent's view of itself, its instances and pending events."""

    agent_version: str = Field("unknown", max_length=64)
    applied_revision: int = Field(ge=0)
    capacity: Resources | None = None
    utilization: Utilization | None = None
    instances: list[ActualInstance] | None = Field(
        None, description="The full actual state; omitted when unchanged since the last ack."
    )
    events: list[OutboxEvent] = Field(default_factory=list, max_length=1000)
    cache: list[CachedImage] | None = Field(
        None, description="The site's artifact cache; omitted when unchanged."
    )
    local_api: str | None = Field(
        None, max_length=255, description="The site-local API's URL, for clients to call."
    )


class ReportAck(Model):
    acked_seq: int = Field(description="Every event with seq <= this is stored; drop them.")
    revision: int = Field(description="The site's current desired revision (a hint to pull).")
    server_time: datetime
