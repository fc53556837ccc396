"""Usage records from sites' USAGE events, stored once per (site, seq), cut at hours.

Rows are keyed by (site, seq, piece) and inserted with "ignore what is there": a
record sent again after a lost acknowledgement (the very same record: the outbox
never folds one it has sent) adds nothing, and neither does a resend two replicas
race on. No RETURNING is needed to tell new events from known ones. A record's vCPUs and memory
are what the site says the instance was given; an older agent's record says neither,
and gets what the controller knows of the instance (its app version's resources).
Records that make no sense (no times, negative seconds) are kept as events and
logged, never billed, and never block the site's outbox.
"""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from cloudlet.controller.db.dialect import insert_ignore
from cloudlet.controller.db.models import App, AppVersion, Instance, Site, UsageRecord
from cloudlet.controller.services._metering import split_hours
from cloudlet.schemas import OutboxEvent

log = logging.getLogger(__name__)

#: The longest interval one record may claim (a merged record of a long outage).
MAX_RECORD = timedelta(days=366)

Resources = tuple[float, int]


def _when(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return when if when.tzinfo is not None else None


def _number(value: Any, low: float, high: float) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and low < value <= high else None


def _stated(data: dict[str, Any]) -> Resources | None:
    vcpus = _number(data.get("vcpus"), 0, 1024)
    memory = _number(data.get("memory_mib"), 0, 4 * 1024 * 1024)
    return (vcpus, int(memory)) if vcpus is not None and memory is not None else None


def _known(session: Session, events: list[tuple[OutboxEvent, str]]) -> dict[str, Resources]:
    """What the controller knows each instance was given, for records that do not say."""
    ids = {e.instance for e, _ in events if e.instance and _stated(e.data) is None}
    if not ids:
        return {}
    rows = session.execute(
        select(Instance.id, Instance.app_version, App.version, App.resources, AppVersion.resources)
        .join(App, App.id == Instance.app_id)
        .outerjoin(
            AppVersion,
            (AppVersion.app_id == App.id) & (AppVersion.version == Instance.app_version),
        )
        .where(Instance.id.in_(ids))
    )
    known: dict[str, Resources] = {}
    for instance_id, version, latest, current, older in rows:
        res = older if version != latest and older is not None else current
        known[instance_id] = (float(res.get("vcpus", 1.0)), int(res.get("memory_mib", 256)))
    return known


def _by_app(session: Session, project: str, app: str) -> Resources | None:
    res = session.scalar(select(App.resources).where(App.project == project, App.name == app))
    return (float(res.get("vcpus", 1.0)), int(res.get("memory_mib", 256))) if res else None


def record(
    session: Session, site: Site, events: list[tuple[OutboxEvent, str | None]], now: datetime
) -> int:
    """Store the pieces of the report's accepted USAGE events that are not stored yet;
    return how many pieces the events make (held ones included)."""
    billable = [(e, p) for e, p in events if p is not None]
    known = _known(session, billable)  # type: ignore[arg-type]
    rows: list[dict[str, Any]] = []
    for event, project in billable:
        assert project is not None
        data = event.data
        at = event.at if event.at.tzinfo is not None else event.at.replace(tzinfo=UTC)
        seconds = _number(data.get("seconds"), -1, MAX_RECORD.total_seconds())
        end = _when(data.get("end")) or at
        start = _when(data.get("start"))
        if seconds is None or seconds < 0:
            log.warning("site %s: usage record %d has no valid seconds", site.name, event.seq)
            continue
        if start is None:
            start = end - timedelta(seconds=seconds)
        if end < start or end - start > MAX_RECORD:
            log.warning("site %s: usage record %d has no valid interval", site.name, event.seq)
            continue
        app = data.get("app") if isinstance(data.get("app"), str) else None
        app = (app or "-")[:63]
        resources = _stated(data) or (event.instance and known.get(event.instance))
        if not resources:
            resources = _by_app(session, project, app) or (0.0, 0)
            if resources == (0.0, 0):
                log.warning("site %s: usage record %d: resources unknown", site.name, event.seq)
        vcpus, memory = resources
        for piece, (a, b, ms) in enumerate(split_hours(start, end, round(seconds * 1000))):
            rows.append(
                {
                    "site_id": site.id,
                    "seq": event.seq,
                    "piece": piece,
                    "project": project,
                    "app": app,
                    "instance_id": event.instance,
                    "start_at": a,
                    "end_at": b,
                    "ms": ms,
                    "vcpus": vcpus,
                    "memory_mib": memory,
                    "recorded_at": at,
                    "received_at": now,
                }
            )
    if rows:
        session.execute(insert_ignore(UsageRecord.__table__, session.get_bind().dialect.name), rows)
    return len(rows)
