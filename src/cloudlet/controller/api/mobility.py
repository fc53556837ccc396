"""Moving instances: move (handoff), client positions, handoffs, drain; and the agents'
side of a handoff (state upload and download under /v1/agent/handoffs)."""

from __future__ import annotations

import os

from fastapi import APIRouter, Query, Request, Response, status
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from cloudlet.controller.api import agent as agent_api
from cloudlet.controller.api.deps import (
    DB,
    State,
    User,
    load_instance,
    load_site,
    require_admin,
    scope_project,
)
from cloudlet.controller.api.instances import _names, _view
from cloudlet.controller.db.models import Handoff as HandoffRow
from cloudlet.controller.db.models import Instance as InstanceRow
from cloudlet.controller.services import fleet, mobility
from cloudlet.controller.services._util import utcnow
from cloudlet.errors import ConflictError, InvalidInputError, NotFoundError
from cloudlet.schemas import Instance, Site, SiteState
from cloudlet.schemas.mobility import (
    ClientPosition,
    Handoff,
    HandoffPhase,
    HandoffReady,
    HandoffSent,
    InstanceMove,
)

router = APIRouter(tags=["mobility"])

#: Largest state archive a source may upload (process state directories).
MAX_STATE_BYTES = 512 * 1024 * 1024


def handoff_view(session: DB, row: HandoffRow) -> Handoff:
    names = fleet.site_names(session, {row.source_site_id, row.dest_site_id})
    inst = session.get(InstanceRow, row.instance_id)
    return Handoff(
        id=row.id,
        instance=inst.name if inst else row.instance_id,
        source=names.get(row.source_site_id, row.source_site_id),
        destination=names.get(row.dest_site_id, row.dest_site_id),
        kind=row.kind,
        phase=row.phase,
        reason=row.reason,
        epoch=row.epoch,
        bytes=row.bytes,
        phases=row.phases,
        created_at=row.created_at,
        finished_at=row.finished_at,
    )


@router.post(
    "/v1/instances/{ref}/move", status_code=status.HTTP_202_ACCEPTED, response_model=Handoff
)
def move_instance(ref: str, body: InstanceMove, session: DB, user: User, st: State) -> Handoff:
    """Hand the instance over to another site (its source stops it and sends its state)."""
    row = load_instance(session, user, ref)
    dest = load_site(session, body.to)
    source = row.site_id
    why = f"moved to {dest.name} on request"
    handoff = mobility.request_move(session, row, dest, why, relay=st.relay_address)
    session.commit()
    st.watcher.notify(source)
    st.watcher.notify(dest.id)
    return handoff_view(session, handoff)


@router.put("/v1/instances/{ref}/client", response_model=Instance)
def set_client_position(
    ref: str, body: ClientPosition, session: DB, user: User, st: State
) -> Instance:
    """Record where the instance's client is now; an instance that follows its client
    is moved by the relocation loop when this leaves its site's latency bound."""
    row = load_instance(session, user, ref)
    row.client_latitude, row.client_longitude = body.latitude, body.longitude
    row.updated_at = utcnow()
    session.commit()
    return _view(row, _names(session, [row]))


@router.get("/v1/handoffs", response_model=list[Handoff])
def list_handoffs(
    session: DB, user: User, instance: str | None = Query(None, description="Name or id.")
) -> list[Handoff]:
    query = select(HandoffRow).order_by(HandoffRow.created_at)
    project = scope_project(user)
    if project is not None:
        query = query.where(HandoffRow.project == project)
    if instance is not None:
        query = query.where(HandoffRow.instance_id == load_instance(session, user, instance).id)
    return [handoff_view(session, h) for h in session.scalars(query)]


@router.post("/v1/sites/{name}/drain", response_model=Site)
def drain_site(name: str, session: DB, user: User, st: State) -> Site:
    """Move every instance off the site by handoff (before maintenance); the site
    takes no new instances while draining."""
    require_admin(user, "draining sites")
    site = load_site(session, name)
    if site.state not in (SiteState.ACTIVE.value, SiteState.DRAINING.value):
        raise ConflictError(f"site {name!r} is {site.state}")
    site.state = SiteState.DRAINING.value
    fleet.record(session, "site.draining", site.id)
    session.commit()
    count = fleet.instance_counts(session).get(site.id, 0)
    return fleet.site_view(site, utcnow(), st.settings.offline_grace_s, count)


# -- the agents' side ---------------------------------------------------------------------


def _agent_handoff(st: agent_api.ControllerState, site_id: str, handoff_id: str) -> HandoffRow:
    with st.sessions() as session:
        row = session.get(HandoffRow, handoff_id)
        if row is None or site_id not in (row.source_site_id, row.dest_site_id):
            raise NotFoundError(f"handoff {handoff_id!r} not found")
        session.expunge(row)
        return row


@router.put("/v1/agent/handoffs/{handoff_id}/state", status_code=status.HTTP_204_NO_CONTENT)
async def upload_state(handoff_id: str, request: Request) -> Response:
    """The source's state archive; once stored, the destination owns the instance."""
    st = agent_api._state(request)
    site = await agent_api.authenticate_request(request, st)
    row = await run_in_threadpool(_agent_handoff, st, site.id, handoff_id)
    if row.source_site_id != site.id:
        raise NotFoundError(f"handoff {handoff_id!r} not found")
    body = await request.body()
    if len(body) > MAX_STATE_BYTES:
        raise InvalidInputError(f"state archive over {MAX_STATE_BYTES} bytes")
    path = mobility.state_path(st.settings.data_dir, handoff_id)

    def store() -> tuple[str, str]:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".part")
        tmp.write_bytes(body)
        with st.sessions.begin() as session:
            handoff = session.get_one(HandoffRow, handoff_id)
            if handoff.phase == mobility.TRANSFERRED:
                return handoff.source_site_id, handoff.dest_site_id  # a retry: done already
            mobility.state_received(session, handoff, len(body))
            os.replace(tmp, path)
            return handoff.source_site_id, handoff.dest_site_id

    source, dest = await run_in_threadpool(store)
    st.watcher.notify(source)
    st.watcher.notify(dest)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/v1/agent/handoffs/{handoff_id}/state")
async def download_state(handoff_id: str, request: Request) -> Response:
    st = agent_api._state(request)
    site = await agent_api.authenticate_request(request, st)
    row = await run_in_threadpool(_agent_handoff, st, site.id, handoff_id)
    path = mobility.state_path(st.settings.data_dir, handoff_id)
    if row.dest_site_id != site.id or not path.is_file():
        raise NotFoundError(f"no state for handoff {handoff_id!r}")
    data = await run_in_threadpool(path.read_bytes)
    return Response(data, media_type="application/octet-stream")


@router.post("/v1/agent/handoffs/{handoff_id}/ready", status_code=status.HTTP_204_NO_CONTENT)
async def handoff_ready(handoff_id: str, body: HandoffReady, request: Request) -> Response:
    """vm, destination: it listens for the VM at ``address``."""
    st = agent_api._state(request)
    site = await agent_api.authenticate_request(request, st)
    row = await run_in_threadpool(_agent_handoff, st, site.id, handoff_id)
    if row.dest_site_id != site.id:
        raise NotFoundError(f"handoff {handoff_id!r} not found")

    def ready() -> str:
        with st.sessions.begin() as session:
            handoff = session.get_one(HandoffRow, handoff_id)
            mobility.vm_ready(session, handoff, body.address)
            return handoff.source_site_id

    st.watcher.notify(await run_in_threadpool(ready))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/v1/agent/handoffs/{handoff_id}/sent", status_code=status.HTTP_204_NO_CONTENT)
async def handoff_sent(handoff_id: str, body: HandoffSent, request: Request) -> Response:
    """vm, source: the VM runs at the destination now."""
    st = agent_api._state(request)
    site = await agent_api.authenticate_request(request, st)
    row = await run_in_threadpool(_agent_handoff, st, site.id, handoff_id)
    if row.source_site_id != site.id:
        raise NotFoundError(f"handoff {handoff_id!r} not found")

    def sent() -> tuple[str, str]:
        with st.sessions.begin() as session:
            handoff = session.get_one(HandoffRow, handoff_id)
            mobility.vm_sent(session, handoff, body.bytes, body.downtime_s)
            return handoff.source_site_id, handoff.dest_site_id

    for site_id in await run_in_threadpool(sent):
        st.watcher.notify(site_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/v1/agent/handoffs/{handoff_id}/fail", status_code=status.HTTP_204_NO_CONTENT)
async def fail_handoff(
    handoff_id: str, request: Request, reason: str = Query(..., max_length=500)
) -> Response:
    st = agent_api._state(request)
    site = await agent_api.authenticate_request(request, st)
    await run_in_threadpool(_agent_handoff, st, site.id, handoff_id)

    def fail() -> tuple[str, str]:
        with st.sessions.begin() as session:
            handoff = session.get_one(HandoffRow, handoff_id)
            if handoff.phase != HandoffPhase.FAILED.value:  # both sides may say so
                mobility.fail_handoff(session, handoff, reason)
            return handoff.source_site_id, handoff.dest_site_id

    for site_id in await run_in_threadpool(fail):
        st.watcher.notify(site_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
