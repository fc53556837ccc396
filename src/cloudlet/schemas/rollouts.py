"""Rollouts: moving an app's instances, or the sites' agents, to a new version in waves."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated

from pydantic import Field, model_validator

from cloudlet.schemas._base import Input, Model
from cloudlet.schemas.apps import Component
from cloudlet.schemas.common import JsonNumber, Name, Resources


class RolloutKind(enum.StrEnum):
    APP = "app"
    AGENT = "agent"


class RolloutStrategy(enum.StrEnum):
    SERIAL = "serial"  # one item per wave
    PARALLEL = "parallel"  # max_parallel items per wave


class RolloutState(enum.StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # a wave was unhealthy: it was rolled back, later waves untouched


class ItemState(enum.StrEnum):
    PENDING = "pending"  # a later wave: not touched yet
    UPDATING = "updating"  # told to move; waiting for it to be healthy
    HEALTHY = "healthy"
    FAILED = "failed"  # not healthy within the timeout (or said it failed)
    ROLLED_BACK = "rolled-back"  # its wave failed: moved back to its old version
    SKIPPED = "skipped"  # already at the version, or not reachable at the start


class RolloutOptions(Input):
    strategy: RolloutStrategy = RolloutStrategy.SERIAL
    max_parallel: Annotated[int, Field(ge=1, le=1000), JsonNumber] = Field(
        1, description="Items per wave with the parallel strategy."
    )
    canary: Annotated[int, Field(ge=0, le=1000), JsonNumber] = Field(
        0, description="A first wave of this many items, alone, before the others."
    )
    health_timeout_s: float | None = Field(
        None,
        gt=0,
        le=86400,
        description="How long an item may take to be healthy at its new version "
        "(default: 60 s for an app, 300 s for an agent).",
    )


class AppVersionCreate(Input):
    """A new version of an app: a new definition of its components; its instances move
    to it by a rollout."""

    components: list[Component] = Field(min_length=1, max_length=16)
    resources: Resources | None = Field(None, description="Omitted: keep the current ones.")
    rollout: RolloutOptions = Field(default_factory=RolloutOptions)

    @model_validator(mode="after")
    def _unique_components(self) -> AppVersionCreate:
        names = [c.name for c in self.components]
        if len(set(names)) != len(names):
            raise ValueError("component names must be unique")
        return self


class AgentUpgradeCreate(Input):
    to: str = Field(min_length=1, max_length=64, description="An uploaded agent package.")
    sites: list[Name] | None = Field(
        None, max_length=10_000, description="Omitted: every site in service."
    )
    rollout: RolloutOptions = Field(default_factory=RolloutOptions)


class AgentPackage(Model):
    version: str
    digest: str
    size: int
    filename: str
    created_at: datetime


class RolloutItem(Model):
    entity: str = Field(description="The instance's id (app) or the site's name (agent).")
    site: str
    wave: int
    from_version: str | None
    state: ItemState
    started_at: datetime | None
    finished_at: datetime | None
    reason: str | None


class Rollout(Model):
    id: str
    kind: RolloutKind
    app: str | None = Field(None, description="The app's name (kind app).")
    project: str
    to_version: str
    strategy: RolloutStrategy
    max_parallel: int
    canary: int
    health_timeout_s: float
    state: RolloutState
    wave: int = Field(description="The wave under way (0-based), or the last one.")
    waves: int
    reason: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    items: list[RolloutItem] = Field(default_factory=list)
