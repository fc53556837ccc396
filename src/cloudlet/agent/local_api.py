"""The site-local HTTP API: health and instance endpoints for clients, served offline too.

``GET /healthz``; ``GET /v1/local/instances[/{id}]`` (state and endpoint, so clients
find their service with the controller unreachable); ``POST /v1/local/instances``
``{"app": ...}`` starts an app the site holds a definition of (origin ``site``);
``DELETE /v1/local/instances/{id}`` removes such a site-origin instance;
``POST /v1/local/instances/{id}/{stop|start|suspend|resume|restart}`` changes any
instance at the site (a controller-origin one as a local override, see
:func:`cloudlet.agent.desired.set_local_state`), with the controller unreachable too;
``GET /v1/local/cache`` lists the artifacts the site holds (complete or being fetched);
``GET /metrics`` answers Prometheus's scrapes (:mod:`cloudlet.agent.metrics`).

Starting an app, stopping or changing instances takes ``Authorization: Bearer``
with a client token the controller signed (:mod:`cloudlet.agent.client_auth`):
checked against the public keys the site holds, it must name the app, and the
instance is metered to its project; it may change only instances of its project
and apps. The site's operator uses the site-local token instead (the configured
``local_token``, or one made at first start in ``data_dir/local-api.token``); bound
to loopback, a caller without any token is the operator. Reads stay open, so that
clients can find their service; ``/metrics`` is a read too.

It runs inside the agent's event loop (uvicorn without its own signal handling:
the agent owns SIGTERM/SIGINT) and writes the port it bound to
``data_dir/local-api.port`` so that tools can find it when the port was 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import secrets
import socket
import ssl
from collections.abc import Awaitable, Callable, Generator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, ConfigDict

from cloudlet._secret_file import write_secret
from cloudlet.agent import actual, artifacts, desired
from cloudlet.agent.client_auth import Caller, ClientAuth
from cloudlet.agent.store import Store
from cloudlet.errors import (
    AuthError,
    CloudletError,
    ConfigError,
    ConflictError,
    ForbiddenError,
    NotFoundError,
    TokenExpiredError,
    TokenRevokedError,
)
from cloudlet.schemas import (
    ActualInstance,
    ActualState,
    CachedImage,
    DesiredState,
    InstanceAction,
    InstanceOrigin,
)
from cloudlet.schemas.common import PROBLEM_MEDIA_TYPE, Name, problem_body
from cloudlet.web import BodyGuard, BodyLimits

log = logging.getLogger(__name__)

PORT_FILE = "local-api.port"


TOKEN_FILE = "local-api.token"

# The same problem types as the controller's API, for the errors the local API raises.
_ERRORS: list[tuple[type[CloudletError], int, str, str]] = [
    (TokenExpiredError, 401, "token-expired", "Token expired"),
    (TokenRevokedError, 401, "token-revoked", "Token revoked"),
    (AuthError, 401, "auth", "Not authenticated"),
    (ForbiddenError, 403, "forbidden", "Forbidden"),
    (NotFoundError, 404, "not-found", "Not found"),
    (ConflictError, 409, "conflict", "Conflict"),
]


class LocalInstanceCreate(BaseModel):
    """Start an app this site already holds the definition of."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    app: Name
    name: Name | None = None


async def _problem(request: Request, exc: Exception) -> JSONResponse:
    status, slug, title = 500, "internal", "Internal error"
    for cls, code, kind, text in _ERRORS:
        if isinstance(exc, cls):
            status, slug, title = code, kind, text
            break
    body = problem_body(status, slug, title, str(exc), request.url.path)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (a name is not one)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def resolve_token(host: str, configured: str | None, data_dir: Path) -> str | None:
    """The site-local token: the operator's own access to starting and changing
    instances (clients carry client tokens instead), or None on loopback, where any
    caller without a client token is the operator.

    Without a configured one, a token is made once and kept (mode 0600) in
    ``data_dir/local-api.token``, for the site's operator.
    """
    if configured:
        return configured
    if is_loopback(host):
        return None
    path = data_dir / TOKEN_FILE
    if path.exists():
        return path.read_text().strip()
    token = f"clt_local_{secrets.token_urlsafe(32)}"
    write_secret(path, token)
    log.warning(
        "the site-local API listens on %s: starting and stopping instances needs the token in %s",
        host,
        path,
    )
    return token


def create_app(
    store: Store,
    health: Callable[[], dict[str, Any]],
    on_desired_change: Callable[[], None] = lambda: None,
    restart: Callable[[str], Awaitable[None]] | None = None,
    token: str | None = None,
    metrics: CollectorRegistry | None = None,
) -> FastAPI:
    """The local API over the agent's store.

    Args:
        health: builds the /healthz body.
        on_desired_change: called (in the event loop) after a local client changed
            desired state.
        restart: restarts an instance's workloads now (the reconciler's); without it
            restart answers 409.
        token: the site-local (operator's) token; None: bound to loopback, where a
            caller without a client token is the operator.
        metrics: the registry ``GET /metrics`` serves (None: no such endpoint).
    """
    app = FastAPI(title="Cloudlet site agent", docs_url=None, redoc_url=None)
    app.add_exception_handler(CloudletError, _problem)
    # Clients on the site's network send small JSON only: bounded and strictly parsed.
    app.add_middleware(BodyGuard, limits=BodyLimits(json=64 * 1024))

    auth = ClientAuth(store, token)

    async def authorized(request: Request) -> Caller:
        # In the event loop, not a worker thread: the check is a store read and one
        # signature (~0.2 ms), less than the hop to a thread and back.
        return auth.caller(request.headers.get("authorization"))

    writer = Depends(authorized)

    def may_change(caller: Caller, instance_id: str) -> None:
        """A client may change only instances of its token's project and apps."""
        if caller.client is None:
            return
        entry = desired.get_entry(store, instance_id)
        if entry is None or entry.state is DesiredState.DELETED:
            raise NotFoundError(f"no instance {instance_id!r} at this site")
        inst = entry.instance
        if inst.project != caller.client.project:
            raise ForbiddenError(f"instance {inst.name!r} is not of the client token's project")
        caller.client.require_app(inst.app)

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return health()

    @app.get("/v1/local/instances", response_model=list[ActualInstance])
    def list_instances() -> list[ActualInstance]:
        return [row.to_wire() for row in actual.list_all(store)]

    @app.get("/v1/local/instances/{instance_id}", response_model=ActualInstance)
    def get_instance(instance_id: str) -> ActualInstance:
        row = actual.get(store, instance_id)
        if row is not None:
            return row.to_wire()
        entry = desired.entries(store).get(instance_id)
        if entry is None or entry.state is DesiredState.DELETED:
            raise NotFoundError(f"no instance {instance_id!r} at this site")
        inst = entry.instance  # accepted, not yet picked up by the reconciler
        return ActualInstance(
            id=inst.id,
            name=inst.name,
            app=inst.app,
            project=inst.project,
            origin=entry.origin,
            state=ActualState.PENDING,
            updated_at=datetime.now(UTC),
        )

    @app.get("/v1/local/cache", response_model=list[CachedImage])
    def list_cache() -> list[CachedImage]:
        return [a.to_wire() for a in artifacts.all_artifacts(store)]

    if metrics is not None:

        @app.get(
            "/metrics",
            response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
        )
        def scrape() -> Response:
            return Response(generate_latest(metrics), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/local/instances", status_code=202, response_model=ActualInstance)
    async def start_instance(body: LocalInstanceCreate, caller: Caller = writer) -> ActualInstance:
        claims = caller.client
        if claims is None:
            inst = desired.add_site_instance(store, body.app, body.name)
        else:
            claims.require_app(body.app)
            inst = desired.add_site_instance(
                store,
                body.app,
                body.name,
                project=claims.project,
                client={"subject": claims.subject, "token": claims.jti},
            )
        on_desired_change()
        return ActualInstance(
            id=inst.id,
            name=inst.name,
            app=inst.app,
            project=inst.project,
            origin=InstanceOrigin.SITE,
            state=ActualState.PENDING,
            updated_at=datetime.now(UTC),
        )

    @app.post(
        "/v1/local/instances/{instance_id}/{action}",
        status_code=202,
        response_model=ActualInstance,
    )
    async def act(
        instance_id: str, action: InstanceAction, caller: Caller = writer
    ) -> ActualInstance:
        may_change(caller, instance_id)
        if action is InstanceAction.RESTART:
            if restart is None:
                raise ConflictError("this site cannot restart instances")
            await restart(instance_id)
        else:
            state = {
                InstanceAction.STOP: DesiredState.STOPPED,
                InstanceAction.SUSPEND: DesiredState.SUSPENDED,
            }.get(action, DesiredState.RUNNING)
            if action is InstanceAction.RESUME:
                entry = desired.entries(store).get(instance_id)
                if entry is not None and entry.state is DesiredState.STOPPED:
                    raise ConflictError(f"instance {instance_id!r} is stopped: start it instead")
            desired.set_local_state(store, instance_id, state)
            on_desired_change()
        return get_instance(instance_id)

    @app.delete("/v1/local/instances/{instance_id}", status_code=202)
    async def delete_instance(instance_id: str, caller: Caller = writer) -> Response:
        may_change(caller, instance_id)
        desired.remove_site_instance(store, instance_id)
        on_desired_change()
        return Response(status_code=202)

    return app


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # The agent handles signals itself and stops this server in order.
        yield


class LocalApi:
    """Serves ``app`` on ``host:port`` as a task of the running event loop."""

    def __init__(
        self,
        app: FastAPI,
        host: str,
        port: int,
        data_dir: Path,
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.port_file = data_dir / PORT_FILE
        self.scheme = "http" if ssl_context is None else "https"
        tls: dict[str, Any] = {}
        if ssl_context is not None:
            # The one context, which renewal updates in place (new handshakes use it).
            tls["ssl_context_factory"] = lambda _config, _default: ssl_context
        config = uvicorn.Config(
            app, log_config=None, access_log=False, lifespan="off", ws="none", **tls
        )
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> int:
        """Bind, start serving and record the bound port; returns it.

        Raises:
            ConfigError: the address cannot be bound (in use, not local).
        """
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise ConfigError(
                f"cannot serve the site-local API on {self.host}:{self.port}: {exc}"
            ) from exc
        sock.set_inheritable(True)
        self.port = int(sock.getsockname()[1])
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        for _ in range(500):  # bounded: up to ~5 s for uvicorn to come up
            if self._server.started or self._task.done():
                break
            await asyncio.sleep(0.01)
        if self._task.done():
            self._task.result()  # re-raise what stopped it
        tmp = self.port_file.with_suffix(".tmp")
        tmp.write_text(f"{self.port}\n")
        os.replace(tmp, self.port_file)
        log.info("site-local API on %s://%s:%d", self.scheme, self.host, self.port)
        return self.port

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        try:
            await asyncio.wait_for(self._task, 5.0)
        except TimeoutError:
            self._task.cancel()
        with contextlib.suppress(FileNotFoundError):
            self.port_file.unlink()
