"""Reading events: what sites reported and what the controller observed, merged."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from cloudlet.controller.db.models import ControllerEvent, Event, Instance, Site


def list_events(
    session: Session,
    *,
    site: Site | None = None,
    kind: str | None = None,
    instance_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 100,
    project: str | None = None,
) -> list[tuple[str, int, str, str | None, datetime, dict[str, object]]]:
    """Newest last: (site_id, seq, kind, instance_id, at, data); controller events have seq 0.

    ``project`` confines the list to events about that project's instances (None: all,
    site-level controller events included).
    """
    q1 = select(Event.site_id, Event.seq, Event.kind, Event.instance_id, Event.at, Event.data)
    q2 = select(
        ControllerEvent.site_id,
        ControllerEvent.id.label("seq"),
        ControllerEvent.kind,
        ControllerEvent.data["instance"].as_string(),
        ControllerEvent.at,
        ControllerEvent.data,
    )
    out = []
    for query, model in ((q1, Event), (q2, ControllerEvent)):
        if site is not None:
            query = query.where(model.site_id == site.id)
        if kind is not None:
            query = query.where(model.kind == kind)
        if since is not None:
            query = query.where(model.at >= since)
        if project is not None:
            if model is Event:
                query = query.where(Event.project == project)
            else:
                mine = select(Instance.id).where(Instance.project == project)
                query = query.where(ControllerEvent.data["instance"].as_string().in_(mine))
        if until is not None:
            query = query.where(model.at < until)
        if instance_id is not None:
            col = Event.instance_id if model is Event else ControllerEvent.data["instance"]
            query = query.where(
                col == instance_id if model is Event else col.as_string() == instance_id
            )
        rows = session.execute(query.order_by(model.at.desc()).limit(limit)).all()
        out.extend((r[0], r[1] if model is Event else 0, *r[2:]) for r in rows)
    out.sort(key=lambda r: r[4])
    return out[-limit:]
