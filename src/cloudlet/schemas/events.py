"""Events: what sites report (lifecycle, alarms, usage), stored once per (site, seq)."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from pydantic import Field

from cloudlet.schemas._base import Model


class EventKind(enum.StrEnum):
    AGENT_STARTED = "agent.started"
    INSTANCE_STATE = "instance.state"  # data: state, previous, reason, timings
    INSTANCE_CREATED = "instance.created"  # a local client started one at the site
    USAGE = "usage"  # data: instance, app, project, seconds, start, end, vcpus, memory_mib
    ALARM = "alarm"  # data: severity, message; stateful ones add alarm_id, state (AlarmSignal)
    SITE = "site"  # controller-side: enrolled, offline, online, decommissioned
    HANDOFF = "handoff"  # data: handoff, phase (sent, received), bytes, seconds
    CHECKPOINT = "checkpoint"  # data: checkpoint, phase (taken, sent, failed), bytes, pause_s
    AGENT_UPGRADE = "agent.upgrade"  # data: phase (staged, upgraded, failed), from, to, reason


class Event(Model):
    site: str
    seq: int = Field(ge=0, description="Per-site sequence number (0 for controller events).")
    kind: str = Field(description="An EventKind from a site, or site.* from the controller.")
    instance: str | None = None
    at: datetime
    data: dict[str, Any] = Field(default_factory=dict)
