"""/v1/events: lifecycle, alarms and usage reported by sites, plus controller events."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Query

from cloudlet.controller.api.deps import DB, User
from cloudlet.controller.services import events, fleet
from cloudlet.errors import NotFoundError
from cloudlet.schemas import Event

router = APIRouter(prefix="/v1/events", tags=["events"])


@router.get("", response_model=list[Event])
def list_events(
    session: DB,
    user: User,
    site: str | None = Query(None, description="Only this site's events."),
    kind: str | None = Query(None, description="Only this kind, e.g. usage."),
    instance: str | None = Query(None, description="Only this instance id."),
    since: datetime | None = Query(None, description="Only events at or after this time."),
    until: datetime | None = Query(None, description="Only events before this time (paging)."),
    limit: int = Query(100, ge=1, le=10_000),
) -> list[Event]:
    site_row = None
    if site is not None:
        site_row = fleet.get_site(session, site)
        if site_row is None:
            raise NotFoundError(f"site {site!r} not found")
    rows = events.list_events(
        session,
        site=site_row,
        kind=kind,
        instance_id=instance,
        since=since,
        until=until,
        limit=limit,
    )
    names = fleet.site_names(session, {r[0] for r in rows if r[0] is not None})
    return [
        Event(
            site=names.get(site_id, site_id or "-"),
            seq=seq,
            kind=kind_,
            instance=inst,
            at=at,
            data=data,
        )
        for site_id, seq, kind_, inst, at, data in rows
    ]
