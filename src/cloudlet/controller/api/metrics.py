"""/metrics: the controller's Prometheus metrics, for an admin token or the metrics token."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from cloudlet.controller.services.auth import authenticate_user
from cloudlet.controller.state import ControllerState
from cloudlet.errors import ForbiddenError
from cloudlet.schemas.common import bearer_secret

router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
)
async def metrics(request: Request) -> Response:
    """Prometheus text exposition: sites by availability and sync status, revision lag,
    request latency by route, events ingested, artifact bytes served, long polls open."""
    st: ControllerState = request.app.state.cloudlet
    secret = bearer_secret(request.headers.get("authorization"))
    wanted = st.settings.metrics_token
    if not (wanted and secret and hmac.compare_digest(secret.encode(), wanted.encode())):
        await run_in_threadpool(_require_admin, st, secret)
    body = await run_in_threadpool(generate_latest, st.metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


def _require_admin(st: ControllerState, secret: str | None) -> None:
    with st.sessions() as session:
        if authenticate_user(session, secret).role != "admin":
            raise ForbiddenError("metrics need an admin token or the metrics token")
