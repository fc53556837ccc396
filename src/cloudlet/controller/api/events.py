"""/v1/events: lifecycle, alarms and usage reported by sites, plus controller events."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request, Response

from cloudlet.controller.api.deps import DB, User, load_site, scope_project
from cloudlet.controller.api.paging import PAGED, Cursor, limit_query, set_next
from cloudlet.controller.services import _paging as paging
from cloudlet.controller.services import events, fleet
from cloudlet.schemas import Event
from cloudlet.schemas.common import IsoDatetime

router = APIRouter(prefix="/v1/events", tags=["events"])
#: The largest page of events (as it always was).
MAX_EVENTS = 10_000


@router.get("", response_model=list[Event], responses=PAGED)
def list_events(
    request: Request,
    response: Response,
    session: DB,
    user: User,
    site: str | None = Query(None, description="Only this site's events."),
    kind: str | None = Query(None, description="Only this kind, e.g. usage."),
    instance: str | None = Query(None, description="Only this instance id."),
    since: IsoDatetime | None = Query(None, description="Only events at or after this time."),
    until: IsoDatetime | None = Query(None, description="Only events before this time (paging)."),
    limit: int = limit_query(100, MAX_EVENTS),
    cursor: Cursor = None,
) -> list[Event]:
    """The newest events, oldest first; the next page is the one before (older).
    Events about the caller's project only, unless the caller is an admin."""
    before = paging.decode("events", cursor, events.KEY_TYPES) if cursor is not None else None
    rows, older = events.list_events(
        session,
        site=load_site(session, site) if site is not None else None,
        kind=kind,
        instance_id=instance,
        since=since,
        until=until,
        limit=limit,
        project=scope_project(user),
        before=before,
    )
    set_next(request, response, paging.encode("events", older) if older is not None else None)
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
