"""Alarms (fault management in the shape of StarlingX's): an alarm id about an entity,
raised once and cleared once, with its history kept."""

from __future__ import annotations

import enum
from datetime import datetime

from pydantic import Field, ValidationError

from cloudlet.schemas._base import Input, Model

#: Longest reason an alarm keeps (a longer one is cut, never refused).
MAX_ALARM_REASON = 2000


class AlarmSeverity(enum.StrEnum):
    CRITICAL = "critical"
    MAJOR = "major"
    MINOR = "minor"
    WARNING = "warning"


class AlarmState(enum.StrEnum):
    RAISE = "raise"
    CLEAR = "clear"


class AlarmSource(enum.StrEnum):
    CONTROLLER = "controller"  # the controller's own verdict (site.offline)
    SITE = "site"  # raised by a site's agent, delivered through its outbox


class AlarmId(enum.StrEnum):
    """The alarm ids Cloudlet raises today (others may be reserved in the docs)."""

    SITE_OFFLINE = "site.offline"
    INSTANCE_CRASH_LOOP = "instance.crash-loop"
    SITE_OUTBOX_BACKLOG = "site.outbox-backlog"
    SITE_SYNC_LAG = "site.sync-lag"
    SITE_DISK_LOW = "site.disk-low"
    SITE_CACHE_FULL = "site.cache-full"


class AlarmSignal(Input):
    """The ``data`` of an ``alarm`` event a site sends: a raise or a clear.

    ``entity`` names what the alarm is about, ``site=NAME`` or
    ``site=NAME/instance=ID``; the controller stamps it with the reporting site's
    name, whatever the site wrote, so a site can only raise alarms about itself.
    """

    alarm_id: str = Field(min_length=1, max_length=63, pattern=r"^[a-z0-9][a-z0-9.-]*$")
    state: AlarmState
    severity: AlarmSeverity = AlarmSeverity.MAJOR
    entity: str | None = Field(None, max_length=255)
    reason: str | None = Field(None, max_length=MAX_ALARM_REASON)

    @classmethod
    def parse(cls, data: dict[str, object]) -> AlarmSignal | None:
        """The signal in an alarm event's data, or None for a plain (stateless) alarm
        such as the outbox-compaction notice, or one that does not follow the contract."""
        if "alarm_id" not in data or "state" not in data:
            return None
        fields = {k: data[k] for k in cls.model_fields if k in data}
        try:
            return cls.model_validate(fields)
        except ValidationError:
            return None


class Alarm(Model):
    """One alarm's life: active while ``cleared_at`` is null."""

    id: str
    alarm_id: str = Field(description="What is wrong, e.g. site.offline, instance.crash-loop.")
    severity: AlarmSeverity
    entity: str = Field(description="What it is about: site=NAME or site=NAME/instance=ID.")
    site: str | None = Field(None, description="The site's name.")
    project: str | None = Field(None, description="The project of the instance it is about.")
    instance: str | None = Field(None, description="The instance id, for instance alarms.")
    reason: str | None = None
    source: AlarmSource
    raised_at: datetime
    cleared_at: datetime | None = Field(None, description="Null while the alarm is active.")
    active: bool
