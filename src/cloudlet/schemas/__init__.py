"""Pydantic models on the wire between controller, agent and CLI: one source of truth."""

from __future__ import annotations

from cloudlet.schemas.apps import App, AppCreate, Component, ComponentKind
from cloudlet.schemas.common import DEFAULT_PROJECT, Problem, Resources, Utilization
from cloudlet.schemas.events import Event, EventKind
from cloudlet.schemas.instances import (
    ActualState,
    DesiredState,
    Instance,
    InstanceCreate,
    InstanceOrigin,
)
from cloudlet.schemas.sites import (
    Availability,
    JoinToken,
    JoinTokenCreate,
    Site,
    SiteCreate,
    SiteCreated,
    SiteState,
    SiteUpdate,
    SyncStatus,
)
from cloudlet.schemas.sync import (
    ActualInstance,
    AgentReport,
    DesiredInstance,
    DesiredStateDoc,
    EnrollRequest,
    EnrollResponse,
    OutboxEvent,
    ReportAck,
)

__all__ = [
    "DEFAULT_PROJECT",
    "ActualInstance",
    "ActualState",
    "AgentReport",
    "App",
    "AppCreate",
    "Availability",
    "Component",
    "ComponentKind",
    "DesiredInstance",
    "DesiredState",
    "DesiredStateDoc",
    "EnrollRequest",
    "EnrollResponse",
    "Event",
    "EventKind",
    "Instance",
    "InstanceCreate",
    "InstanceOrigin",
    "JoinToken",
    "JoinTokenCreate",
    "OutboxEvent",
    "Problem",
    "ReportAck",
    "Resources",
    "Site",
    "SiteCreate",
    "SiteCreated",
    "SiteState",
    "SiteUpdate",
    "SyncStatus",
    "Utilization",
]
