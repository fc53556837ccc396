"""Apps: what application providers publish and sites run."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated

from pydantic import ConfigDict, Field, StrictBool, model_validator

from cloudlet.schemas._base import Input, Model
from cloudlet.schemas.common import JsonNumber, LabelMap, Name, Project, Resources

#: An environment variable's name, as POSIX shells accept it.
EnvName = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


_KEY = r"[A-Za-z0-9][A-Za-z0-9_./-]*"
_VALUE = r"[^\s,()!=]+"
# "in" needs a space before it, so that a key cannot run into it ("label:zonein(a)").
_TEST = rf"(?:\s*(?:==|!=)\s*{_VALUE}|\s+(?:not\s+)?in\s*\(\s*{_VALUE}(?:\s*,\s*{_VALUE})*\s*\))"
#: The placement constraint grammar (cloudlet.placement.constraints) as one regular
#: expression: ``label:KEY`` may stand bare, a site field needs a test.
CONSTRAINT_PATTERN = rf"^!?\s*(?:label:{_KEY}(?:{_TEST})?|(?:region|name|id){_TEST})$"


class ComponentKind(enum.StrEnum):
    PROCESS = "process"
    VM = "vm"


class Component(Input):
    """One VM or process; an app's components are placed together at one site."""

    # The validator's rule, said in the schema: a vm needs an image, a process a command.
    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {
                    "required": ["kind", "image"],
                    "properties": {"kind": {"const": "vm"}, "image": {"type": "string"}},
                },
                {
                    "required": ["command"],
                    "properties": {"kind": {"const": "process"}, "command": {"minItems": 1}},
                },
            ]
        }
    )

    name: Name = "main"
    kind: ComponentKind = ComponentKind.PROCESS
    command: list[Annotated[str, Field(max_length=4096)]] = Field(
        default_factory=list,
        max_length=256,
        description="Process kind: argv; $PORT holds the assigned port.",
    )
    env: dict[EnvName, Annotated[str, Field(max_length=8192)]] = Field(
        default_factory=dict, max_length=128
    )
    port: StrictBool = Field(True, description="Assign a host port and report it as the endpoint.")
    image: str | None = Field(
        None, min_length=1, max_length=253, description="VM kind: base image digest."
    )
    overlay: str | None = Field(
        None, min_length=1, max_length=253, description="VM kind: overlay id."
    )
    guest_port: Annotated[int, Field(gt=0, lt=65536), JsonNumber] | None = Field(
        None, description="VM kind: service port."
    )
    stateful: StrictBool = Field(
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
    latency_bound_ms: Annotated[int, Field(gt=0, le=3_600_000), JsonNumber] | None = None
    labels: LabelMap = Field(default_factory=dict)
    constraints: list[Annotated[str, Field(max_length=253, pattern=CONSTRAINT_PATTERN)]] = Field(
        default_factory=list,
        max_length=32,
        description='Placement constraints, e.g. "region==eu-west".',
    )
    relocatable: StrictBool = Field(
        False, description="Restart it at another site when its site stays offline."
    )
    failover_after_s: float | None = Field(
        None, gt=0, le=86400, description="Offline time after which a relocatable instance moves."
    )
    checkpoint_interval_s: float | None = Field(
        None,
        ge=1,
        le=86400,
        description="Relocatable apps: seconds between checkpoints of each running "
        "instance, kept at the controller; a failover restarts the instance from the "
        "last one (its state up to then) instead of from the app's definition.",
    )

    @model_validator(mode="after")
    def _unique_components(self) -> AppCreate:
        names = [c.name for c in self.components]
        if len(set(names)) != len(names):
            raise ValueError("component names must be unique")
        return self

    @model_validator(mode="after")
    def _checkpoints_need_failover(self) -> AppCreate:
        if self.checkpoint_interval_s is None:
            return self
        if not self.relocatable or self.failover_after_s is None:
            raise ValueError(
                "checkpoint_interval_s needs relocatable: true and failover_after_s: "
                "checkpoints are what a failover restarts from"
            )
        vms = [c for c in self.components if c.kind is ComponentKind.VM]
        if vms and len(self.components) != 1:
            raise ValueError("checkpoints of VMs are for apps of one VM component")
        if not vms and not any(c.stateful for c in self.components):
            raise ValueError(
                "checkpoint_interval_s needs a VM component or a stateful process "
                "component: nothing else holds state to checkpoint"
            )
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
    checkpoint_interval_s: float | None = None
    version: int = Field(1, description="The latest published version; new instances run it.")
