"""Apps: what application providers publish and sites run."""

from __future__ import annotations

import enum
from datetime import datetime

from pydantic import Field, model_validator

from cloudlet.schemas._base import Input, Model
from cloudlet.schemas.common import LabelMap, Name, Project, Resources


class ComponentKind(enum.StrEnum):
    PROCESS = "process"
    VM = "vm"


class Component(Input):
    """One VM or process; an app's components are placed together at one site."""

    name: Name = "main"
    kind: ComponentKind = ComponentKind.PROCESS
    command: list[str] = Field(
        default_factory=list, description="Process kind: argv; $PORT holds the assigned port."
    )
    env: dict[str, str] = Field(default_factory=dict)
    port: bool = Field(True, description="Assign a host port and report it as the endpoint.")
    image: str | None = Field(None, description="VM kind: base image digest.")
    overlay: str | None = Field(None, description="VM kind: overlay id.")
    guest_port: int | None = Field(None, gt=0, lt=65536, description="VM kind: service port.")
    stateful: bool = Field(
        False,
        description="Process kind: gets $CLOUDLET_STATE_DIR, a directory that moves with "
        "the instance when it is handed off to another site.",
    )

    @model_validator(mode="after")
    def _kind_fields(self) -> Component:
        if self.kind is ComponentKind.PROCESS and not self.command:
            raise ValueError("a process component needs a command")
        if self.kind is ComponentKind.VM and not self.image:
            raise ValueError("a vm component needs an image")
        return self


class AppCreate(Input):
    name: Name
    project: Project | None = Field(None, description="Defaults to the caller's project.")
    description: str = Field("", max_length=1000)
    components: list[Component] = Field(min_length=1, max_length=16)
    resources: Resources = Field(default_factory=Resources)
    latency_bound_ms: int | None = Field(None, gt=0, le=3_600_000)
    labels: LabelMap = Field(default_factory=dict)
    constraints: list[str] = Field(
        default_factory=list, description='Placement constraints, e.g. "region==eu-west".'
    )
    relocatable: bool = Field(
        False, description="Restart it at another site when its site stays offline."
    )
    failover_after_s: float | None = Field(
        None, gt=0, le=86400, description="Offline time after which a relocatable instance moves."
    )

    @model_validator(mode="after")
    def _unique_components(self) -> AppCreate:
        names = [c.name for c in self.components]
        if len(set(names)) != len(names):
            raise ValueError("component names must be unique")
        return self


class App(Model):
    id: str
    name: str
    project: str
    description: str
    components: list[Component]
    resources: Resources
    latency_bound_ms: int | None
    labels: dict[str, str]
    constraints: list[str]
    created_at: datetime
    relocatable: bool = False
    failover_after_s: float | None = None
