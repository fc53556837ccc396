"""/v1/agent: what site agents call. Every endpoint is idempotent."""

from __future__ import annotations

from fastapi import APIRouter, Query, Response, status
from starlette.concurrency import run_in_threadpool

from cloudlet.controller.api.deps import DB, AgentSite, AgentSiteBrief, State
from cloudlet.controller.services import fleet, sync
from cloudlet.controller.services._util import utcnow
from cloudlet.schemas import AgentReport, DesiredStateDoc, EnrollRequest, EnrollResponse, ReportAck

router = APIRouter(prefix="/v1/agent", tags=["agent"])


@router.post("/enroll", status_code=status.HTTP_201_CREATED, response_model=EnrollResponse)
def enroll(body: EnrollRequest, session: DB) -> EnrollResponse:
    return fleet.enroll(session, body)


@router.get(
    "/desired",
    response_model=DesiredStateDoc,
    responses={204: {"description": "Nothing changed within the wait."}},
)
async def desired(
    site: AgentSiteBrief,
    st: State,
    since: int = Query(0, ge=0, description="The revision the agent holds."),
    wait: float = Query(0, ge=0, le=300, description="Seconds to wait for a change."),
) -> DesiredStateDoc | Response:
    """Long-poll for desired state: answers at once when the agent is behind,
    otherwise waits up to ``wait`` seconds for a change (204 if none)."""
    # since=0 means "I hold nothing": always answer with a snapshot.
    site_id, revision = site.id, site.revision
    if 0 < since == revision and wait > 0:
        await st.watcher.wait(site_id, min(wait, st.settings.long_poll_max_s))
        revision = await run_in_threadpool(_current_revision, st, site_id)
    if 0 < since == revision:
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    return await run_in_threadpool(_doc, st, site_id, since)


def _current_revision(st: State, site_id: str) -> int:
    with st.sessions() as session:
        return session.get_one(fleet.Site, site_id).revision


def _doc(st: State, site_id: str, since: int) -> DesiredStateDoc:
    with st.sessions() as session:
        return sync.desired_doc(session, session.get_one(fleet.Site, site_id), since)


@router.post("/report", response_model=ReportAck)
def report(body: AgentReport, site: AgentSite, session: DB) -> ReportAck:
    acked = sync.ingest_report(session, site, body, utcnow())
    return ReportAck(acked_seq=acked, revision=site.revision, server_time=utcnow())
