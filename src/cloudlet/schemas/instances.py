"""Instances: one running copy of an app at one site."""

from __future__ import annotations

import enum
from datetime import datetime

from pydantic import Field, StrictBool

from cloudlet.schemas._base import Input, Model
from cloudlet.schemas.common import Latitude, Longitude, Name


class DesiredState(enum.StrEnum):
    RUNNING = "running"
    STOPPED = "stopped"
    SUSPENDED = "suspended"  # VMs only: RAM and device state kept at the site
    DELETED = "deleted"


class ActualState(enum.StrEnum):
    PENDING = "pending"
    FETCHING = "fetching"
    SYNTHESIZING = "synthesizing"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    SUSPENDING = "suspending"
    SUSPENDED = "suspended"
    FAILED = "failed"
    RELOCATING = "relocating"
    DELETED = "deleted"


class InstanceOrigin(enum.StrEnum):
    CONTROLLER = "controller"  # asked of the controller
    SITE = "site"  # started by a local client through the site's own API


class InstanceAction(enum.StrEnum):
    """What an operator may ask of an existing instance (``POST .../{ref}/{action}``)."""

    STOP = "stop"
    START = "start"
    SUSPEND = "suspend"
    RESUME = "resume"
    RESTART = "restart"


class InstanceCreate(Input):
    app: Name
    site: Name | None = Field(None, description="Leave empty to let placement choose.")
    name: Name | None = None
    client_latitude: Latitude | None = None
    client_longitude: Longitude | None = None
    follow_client: StrictBool = Field(
        False, description="Tie the instance to the client: move it when the client moves."
    )


class Instance(Model):
    id: str
    name: str
    app: str
    project: str
    site: str
    origin: InstanceOrigin
    desired_state: DesiredState
    actual_state: ActualState
    endpoint: str | None
    reason: str | None
    timings: dict[str, float] = Field(default_factory=dict, description="Seconds per phase.")
    restarts: int = Field(0, description="Restarts asked for so far (each one bumps it).")
    crash_restarts: int = Field(
        0,
        description="Times the site restarted the workloads after they exited on their own "
        "(since they were last started); a crash loop raises instance.crash-loop.",
    )
    usage_since: datetime | None = Field(
        None,
        description="Start of the usage interval not yet recorded: the site writes usage "
        "records every 60 s (usage_interval_s) and when the instance stops.",
    )
    created_at: datetime
    epoch: int = Field(0, description="Moves so far (handoffs, failovers, rebalances).")
    app_version: int = Field(1, description="The app version it runs.")
    client_latitude: float | None = None
    client_longitude: float | None = None
    placement: dict[str, object] | None = Field(
        None, description="Why the instance is where it is: ranked and rejected sites."
    )
    updated_at: datetime
