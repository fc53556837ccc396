"""/v1/agent: what site agents call. Every endpoint is idempotent."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Query, Request, Response, status
from starlette.concurrency import run_in_threadpool

from cloudlet.controller.api.deps import DB
from cloudlet.controller.services import auth, fleet, sync
from cloudlet.controller.services._util import utcnow
from cloudlet.controller.state import ControllerState
from cloudlet.schemas import AgentReport, DesiredStateDoc, EnrollRequest, EnrollResponse, ReportAck
from cloudlet.schemas.common import bearer_secret

router = APIRouter(prefix="/v1/agent", tags=["agent"])
T = TypeVar("T")


@router.post("/enroll", status_code=status.HTTP_201_CREATED, response_model=EnrollResponse)
def enroll(body: EnrollRequest, session: DB) -> EnrollResponse:
    return fleet.enroll(session, body)


@router.get(
    "/desired",
    response_model=DesiredStateDoc,
    responses={204: {"description": "Nothing changed within the wait."}},
)
async def desired(
    request: Request,
    since: int = Query(0, ge=0, description="The revision the agent holds."),
    wait: float = Query(0, ge=0, le=300, description="Seconds to wait for a change."),
) -> DesiredStateDoc | Response:
    """Long-poll for desired state: answers at once when the agent is behind,
    otherwise waits up to ``wait`` seconds for a change (204 if none)."""
    # since=0 means "I hold nothing": always answer with a snapshot.
    st = _state(request)
    site = await _authenticate(request, st)
    site_id, revision = site.id, site.revision
    if 0 < since == revision and wait > 0:
        await st.watcher.wait(site_id, min(wait, st.settings.long_poll_max_s))
        revision = await _read(st, sync.site_revision, site_id)
    if 0 < since == revision:
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    return await run_in_threadpool(_doc, st, site_id, since)


def _state(request: Request) -> ControllerState:
    # Not the State dependency: FastAPI runs a plain-function dependency in a
    # worker thread, a hop that costs more than these handlers' own work.
    return request.app.state.cloudlet


async def _authenticate(request: Request, st: ControllerState) -> auth.SiteBrief:
    """The calling agent's site; also tells the traffic counters whose bytes these are."""
    credential = bearer_secret(request.headers.get("authorization"))
    site = await _read(st, auth.authenticate_site_brief, credential)
    request.scope.setdefault("state", {})["site_id"] = site.id
    return site


async def _read(st: ControllerState, query: Callable[..., T], *args: Any) -> T:
    """Run one short read, holding no connection afterwards (a long poll must not
    pin one while it waits).

    With SQLite the event loop runs it itself through its own connection: an
    indexed local read takes some 20 us, less than a hop to a worker thread, and
    a crowd of worker threads contending for the GIL is what limited these
    endpoints. With a database across the network, a worker thread runs it.
    """
    connection = st.loop_connection
    if connection is None:
        return await run_in_threadpool(_read_in_thread, st, query, *args)
    try:
        return query(connection, *args)
    finally:
        connection.rollback()


def _read_in_thread(st: ControllerState, query: Callable[..., T], *args: Any) -> T:
    with st.engine.connect() as connection:
        return query(connection, *args)


def _doc(st: ControllerState, site_id: str, since: int) -> DesiredStateDoc:
    with st.sessions() as session:
        return sync.desired_doc(session, session.get_one(fleet.Site, site_id), since)


@router.post("/report", response_model=ReportAck)
async def report(body: AgentReport, request: Request) -> Response:
    """Store a report. A heartbeat (no events, no instance list, nothing newly
    applied: most reports) is acknowledged at once and written with others within
    a second; anything else is stored in its own transaction before the answer."""
    st = _state(request)
    site = await _authenticate(request, st)
    if sync.is_heartbeat(site, body):
        now = utcnow()
        st.heartbeats.add(site.id, sync.heartbeat_values(body, now))
        ack = ReportAck(acked_seq=site.acked_seq, revision=site.revision, server_time=now)
    else:
        ack = await run_in_threadpool(_ingest, st, site.id, body)
    # Serialized here: the model is built by us, so validating it again is waste.
    return Response(ack.model_dump_json(), media_type="application/json")


def _ingest(st: ControllerState, site_id: str, body: AgentReport) -> ReportAck:
    with st.sessions.begin() as session:
        site = session.get_one(fleet.Site, site_id)
        acked, rejected = sync.ingest_report(
            session, site, body, utcnow(), st.settings.max_seq_jump
        )
        revision = site.revision
    refused = {r.seq for r in rejected}
    for event in body.events:
        if event.seq not in refused:
            st.metrics.events_ingested.labels(event.kind.value).inc()
    if rejected:
        st.metrics.events_refused.inc(len(rejected))
    return ReportAck(acked_seq=acked, rejected=rejected, revision=revision, server_time=utcnow())
