"""/v1/agent: what site agents call. Every endpoint is idempotent."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from anyio import CapacityLimiter, to_thread
from fastapi import APIRouter, Query, Request, Response, status
from starlette.concurrency import run_in_threadpool

from cloudlet.controller.api.deps import DB
from cloudlet.controller.peer import check_peer
from cloudlet.controller.services import auth, certificates, fleet, sync
from cloudlet.controller.services._util import hash_secret, utcnow
from cloudlet.controller.state import ControllerState
from cloudlet.errors import AuthError, InvalidInputError
from cloudlet.schemas import AgentReport, DesiredStateDoc, EnrollRequest, EnrollResponse, ReportAck
from cloudlet.schemas.common import bearer_secret

router = APIRouter(prefix="/v1/agent", tags=["agent"])


@router.post("/enroll", status_code=status.HTTP_201_CREATED, response_model=EnrollResponse)
def enroll(body: EnrollRequest, session: DB, request: Request) -> EnrollResponse:
    """Trade a one-time join token for the site's credential and, for its CSRs, its
    certificates (a re-join revokes the site's earlier ones)."""
    st = _state(request)
    tls = st.settings.tls
    if body.csr is None and not tls.insecure:
        raise InvalidInputError("csr is required: this controller gives each site a certificate")
    answer = fleet.enroll(session, body)
    if body.csr is not None:
        site = session.get_one(fleet.Site, answer.site_id)
        certificates.revoke_site(session, site.id)
        answer.certificates = certificates.issue(
            session, st.ca, site, body.csr, body.local_csr, tls.site_cert_validity_s
        )
        st.revoked.invalidate()
    return answer


@router.get(
    "/desired",
    response_model=DesiredStateDoc,
    responses={204: {"description": "Nothing changed within the wait."}},
)
async def desired(
    request: Request,
    since: int = Query(0, ge=0, description="The revision the agent holds."),
    wait: float = Query(0, ge=0, le=300, description="Seconds to wait for a change."),
) -> Response:
    """Long-poll for desired state: answers at once when the agent is behind,
    otherwise waits up to ``wait`` seconds for a change (204 if none)."""
    st = _state(request)
    site = await authenticate_request(request, st)
    doc = await pull_desired(st, site, since, wait)
    if doc is None:
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    return Response(doc, media_type="application/json")


def _state(request: Request) -> ControllerState:
    # Not the State dependency: FastAPI runs a plain-function dependency in a
    # worker thread, a hop that costs more than these handlers' own work.
    return request.app.state.cloudlet


async def authenticate_request(request: Request, st: ControllerState) -> auth.SiteBrief:
    """The site of the agent making ``request`` (see :func:`authenticate`)."""
    return await authenticate(st, request.headers.get("authorization"), request.scope)


async def authenticate(
    st: ControllerState, authorization: str | None, scope: MutableMapping[str, Any]
) -> auth.SiteBrief:
    """The calling agent's site; also tells the traffic counters whose bytes these are.

    Raises:
        AuthError: missing or unknown credential, or a decommissioned site.
    """
    credential = bearer_secret(authorization)
    if not credential:
        raise AuthError("missing site credential")
    site = await st.site_briefs.get(hash_secret(credential))
    if site is None:
        raise AuthError("invalid or revoked site credential")
    if not st.settings.tls.insecure:
        await check_peer(scope, site.id, st.revoked)
    scope.setdefault("state", {})["site_id"] = site.id
    return site


async def pull_desired(
    st: ControllerState, site: auth.SiteBrief, since: int, wait: float
) -> bytes | None:
    """The desired-state document from ``since`` as JSON, or None when nothing
    changed within ``wait`` seconds."""
    # since=0 means "I hold nothing": always answer with a snapshot.
    revision = site.revision
    if 0 < since == revision and wait > 0:
        await st.watcher.wait(site.id, min(wait, st.settings.long_poll_max_s))
        current = await st.site_revisions.get(site.id)
        revision = revision if current is None else current  # None: deleted meanwhile
    if 0 < since == revision:
        return None
    doc = await to_thread.run_sync(_doc, st, site.id, since, limiter=_document_limiter(st))
    st.metrics.desired_documents.labels("full" if doc.full else "delta").inc()
    # Serialized here: the model is built by us, so validating it again is waste.
    return doc.model_dump_json().encode()


#: Worker threads building desired-state documents at once. A fleet's cold start asks
#: for one snapshot per agent; on their own limiter they queue among themselves,
#: not in front of the reports and reads that share the default one.
DOCUMENT_THREADS = 8


def _document_limiter(st: ControllerState) -> CapacityLimiter:
    if st.document_limiter is None:
        st.document_limiter = CapacityLimiter(DOCUMENT_THREADS)
    return st.document_limiter


def _doc(st: ControllerState, site_id: str, since: int) -> DesiredStateDoc:
    with st.sessions() as session:
        return sync.desired_doc(session, session.get_one(fleet.Site, site_id), since)


@router.post("/report", response_model=ReportAck)
async def report(body: AgentReport, request: Request) -> Response:
    """Store a report. A heartbeat (no events, no instance list: most reports) is
    acknowledged at once and written with others within a second; anything else is
    stored in its own transaction before the answer."""
    st = _state(request)
    site = await authenticate_request(request, st)
    return Response(await store_report(st, site, body), media_type="application/json")


async def store_report(st: ControllerState, site: auth.SiteBrief, body: AgentReport) -> bytes:
    """Store (or buffer, for a heartbeat) one report; the acknowledgement as JSON."""
    if sync.is_heartbeat(body):
        now = utcnow()
        st.heartbeats.add(site.id, sync.heartbeat_values(body, now, site))
        ack = ReportAck(acked_seq=site.acked_seq, revision=site.revision, server_time=now)
    else:
        ack = await run_in_threadpool(_ingest, st, site.id, body)
    return ack.model_dump_json().encode()


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
