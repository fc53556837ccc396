"""/v1/discover: the sites that can serve an app for a client at a spot, ranked, with why."""

from __future__ import annotations

from fastapi import APIRouter, Query
from sqlalchemy import select

from cloudlet.controller.api.deps import DB, State
from cloudlet.controller.db.models import App
from cloudlet.controller.services import discovery
from cloudlet.errors import InvalidInputError, NotFoundError
from cloudlet.schemas import DEFAULT_PROJECT
from cloudlet.schemas.mobility import Discovery

router = APIRouter(tags=["discovery"])


@router.get("/v1/discover", response_model=Discovery)
def discover(
    session: DB,
    st: State,
    app: str = Query(..., min_length=1, max_length=63, description="The app's name."),
    project: str = Query(DEFAULT_PROJECT, max_length=63),
    lat: float | None = Query(None, ge=-90, le=90, description="The client's latitude."),
    lon: float | None = Query(None, ge=-180, le=180, description="The client's longitude."),
    limit: int = Query(10, ge=1, le=100),
) -> Discovery:
    """Open to any caller that knows the app's name: there are no client identities
    yet, and the answer holds nothing but public site facts."""
    if (lat is None) != (lon is None):
        raise InvalidInputError("give both lat and lon, or neither")
    row = session.scalar(select(App).where(App.project == project, App.name == app))
    if row is None:
        raise NotFoundError(f"app {app!r} not found")
    grace = st.settings.offline_grace_s
    snapshot = st.fleet_snapshot.get(st.sessions, grace)
    return discovery.discover(session, row, lat, lon, grace, limit=limit, snapshot=snapshot)
