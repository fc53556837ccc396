"""/v1/alarms: raised and cleared alarms, active ones or the history."""

from __future__ import annotations

from fastapi import APIRouter, Query

from cloudlet.controller.api.deps import DB, User, load_site, scope_project
from cloudlet.controller.services import alarms
from cloudlet.schemas.alarms import Alarm

router = APIRouter(prefix="/v1/alarms", tags=["alarms"])


@router.get("", response_model=list[Alarm])
def list_alarms(
    session: DB,
    user: User,
    active: bool | None = Query(
        None, description="true: only active alarms; false: only cleared ones; omitted: all."
    ),
    site: str | None = Query(None, description="Only alarms about this site and its instances."),
    limit: int = Query(1000, ge=1, le=10_000, description="At most this many, newest first."),
) -> list[Alarm]:
    """Newest first. Admins see every alarm; other callers only those about their
    project's instances (site alarms are the operator's)."""
    return alarms.list_alarms(
        session,
        active=active,
        site=load_site(session, site) if site is not None else None,
        project=scope_project(user),
        limit=limit,
    )
