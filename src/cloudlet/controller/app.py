"""The controller's FastAPI application factory."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from sqlalchemy import text

from cloudlet import __version__
from cloudlet.controller import tasks, ui
from cloudlet.controller.api import (
    agent,
    alarms,
    apps,
    artifacts,
    certificates,
    checkpoints,
    client_tokens,
    discover,
    events,
    identity,
    instances,
    metrics,
    mobility,
    openapi,
    prices,
    problems,
    projects,
    quotas,
    rollouts,
    signing,
    sites,
    upgrades,
    usage,
    users,
)
from cloudlet.controller.api.agent_lane import REPORT, REPORT_MAX_BYTES, AgentLane
from cloudlet.controller.db.dialect import is_sqlite
from cloudlet.controller.db.engine import default_url, make_engine, make_sessionmaker, upgrade
from cloudlet.controller.metrics import ControllerMetrics, MetricsMiddleware
from cloudlet.controller.peer import RevokedSerials
from cloudlet.controller.services import agent_packages
from cloudlet.controller.services._store import ArtifactStore
from cloudlet.controller.services.auth import bootstrap
from cloudlet.controller.services.client_tokens import load_signing_key, register_key
from cloudlet.controller.state import ControllerState
from cloudlet.controller.webhook import AlarmWebhook
from cloudlet.pki import CertificateAuthority
from cloudlet.settings import ControllerSettings
from cloudlet.web import MIB, BodyGuard, BodyLimits, StreamedRoute

#: Agents' reports carry up to a few MB of events; enrollment a token; upload chunks
#: (16 MiB from the CLI) stream to disk.
BODY_LIMITS = BodyLimits(
    json=1 * MIB,
    paths={
        REPORT: REPORT_MAX_BYTES,
        "/v1/agent/enroll": 32 * 1024,
        certificates.RENEW_PATH: 32 * 1024,
    },
    streamed=(
        StreamedRoute("PUT", re.compile(r"^/v1/uploads/[^/]+$"), 64 * MIB),
        StreamedRoute("POST", upgrades.UPLOAD_PATH, agent_packages.MAX_PACKAGE_BYTES),
        StreamedRoute("PUT", checkpoints.UPLOAD_PATH, checkpoints.MAX_CHECKPOINT_BYTES),
    ),
)


class TrafficMiddleware:
    """Counts the bytes each site's agent exchanges with us (pure ASGI: cheap)."""

    def __init__(self, app: Any, state: ControllerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/agent/"):
            await self.app(scope, receive, send)
            return
        counts = [0, 0]

        async def counting_receive() -> dict[str, Any]:
            message = await receive()
            counts[0] += len(message.get("body", b""))
            return message

        async def counting_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body":
                counts[1] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, counting_receive, counting_send)
        finally:
            site_id = scope.get("state", {}).get("site_id")
            if site_id:
                self.state.traffic.add(site_id, counts[0], counts[1])


def open_state(settings: ControllerSettings) -> ControllerState:
    """Connect to the database, migrate it, bootstrap the admin identity and the
    client-token key, and open the artifact store (ConfigError if its S3 bucket is
    missing or refused, or the configured signing key is unusable)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    artifacts = ArtifactStore.from_settings(settings)
    client_key = load_signing_key(settings)
    tls = settings.tls
    ca = CertificateAuthority.load_or_create(tls.ca_cert_file, tls.ca_key_file, settings.data_dir)
    engine = make_engine(settings.database_url or default_url(settings.data_dir))
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    with sessions.begin() as session:
        bootstrap(session, settings.data_dir)
        register_key(session, client_key.public)
    loop_connection = engine.connect() if is_sqlite(engine) else None
    state = ControllerState(
        settings=settings,
        engine=engine,
        sessions=sessions,
        artifacts=artifacts,
        loop_connection=loop_connection,
        client_key=client_key,
        ca=ca,
        revoked=RevokedSerials(sessions, tls.revocation_refresh_s),
    )
    state.metrics = ControllerMetrics(engine, settings.offline_grace_s, state.watcher)
    if settings.alarms.webhook_url:
        state.alarm_webhook = AlarmWebhook(settings.alarms)
        state.alarm_webhook.watch(sessions)
    return state


def create_app(settings: ControllerSettings) -> FastAPI:
    state = open_state(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        running = tasks.start(state)
        try:
            yield
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            tasks.flush_traffic(state)
            tasks.flush_fetches(state)
            tasks.flush_heartbeats(state)
            state.close()

    app = FastAPI(
        title="Cloudlet controller",
        version=__version__,
        description="Manage a fleet of edge sites, their apps and instances.",
        lifespan=lifespan,
    )
    app.state.cloudlet = state
    problems.install(app)
    for module in (
        sites, apps, instances, mobility, discover, events, alarms, agent, artifacts, metrics,
        upgrades, rollouts, checkpoints, client_tokens, signing,
        identity, projects, users, quotas, prices, usage, certificates,
    ):  # fmt: skip
        app.include_router(module.router)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        with state.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        leads = state.leadership is not None and state.leadership.held
        return {"status": "ok", "version": __version__, "role": "leader" if leads else "standby"}

    openapi.install(app)
    ui.install(app)
    app.add_middleware(AgentLane, state=state)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    app.add_middleware(TrafficMiddleware, state=state)
    # Outermost: an oversized or malformed body costs nothing further, not even a
    # token lookup.
    app.add_middleware(BodyGuard, limits=BODY_LIMITS)
    return app
