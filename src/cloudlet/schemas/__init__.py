"""Pydantic models on the wire between controller, agent and CLI: one source of truth."""

from __future__ import annotations

from cloudlet.schemas.apps import App, AppCreate, Component, ComponentKind
from cloudlet.schemas.artifacts import (
    ArtifactKind,
    CachedImage,
    Image,
    Overlay,
    PrestageRequest,
    Upload,
    UploadCreate,
)
from cloudlet.schemas.common import DEFAULT_PROJECT, Problem, Resources, Utilization
from cloudlet.schemas.events import Event, EventKind
from cloudlet.schemas.instances import (
    ActualState,
    DesiredState,
    Instance,
    InstanceAction,
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
    RejectedEvent,
    ReportAck,
)

__all__ = [
    "DEFAULT_PROJECT",
    "ActualInstance",
    "ActualState",
    "AgentReport",
    "App",
    "AppCreate",
    "ArtifactKind",
    "Availability",
    "CachedImage",
    "Component",
    "ComponentKind",
    "DesiredInstance",
    "DesiredState",
    "DesiredStateDoc",
    "EnrollRequest",
    "EnrollResponse",
    "Event",
    "EventKind",
    "Image",
    "Instance",
    "InstanceAction",
    "InstanceCreate",
    "InstanceOrigin",
    "JoinToken",
    "JoinTokenCreate",
    "OutboxEvent",
    "Overlay",
    "PrestageRequest",
    "Problem",
    "RejectedEvent",
    "ReportAck",
    "Resources",
    "Site",
    "SiteCreate",
    "SiteCreated",
    "SiteState",
    "SiteUpdate",
    "SyncStatus",
    "Upload",
    "UploadCreate",
    "Utilization",
]
