"""A stub of the controller's /v1/agent API for agent-only integration tests.

It keeps everything in memory, stores events once per seq like the real one, and
can play offline (503), refuse the credential (401) or lose one report answer
after storing its events.
"""

from __future__ import annotations

import socket
import threading
import time
from datetime import UTC, datetime
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from cloudlet.schemas import (
    AgentReport,
    DesiredInstance,
    DesiredStateDoc,
    EnrollRequest,
    EnrollResponse,
    ReportAck,
)

TOKEN = "join-token-123"
CREDENTIAL = "site-credential-abc"


def problem(status: int, kind: str, detail: str) -> JSONResponse:
    return JSONResponse(
        {
            "type": f"https://cloudlet.dev/problems/{kind}",
            "title": kind,
            "status": status,
            "detail": detail,
        },
        status_code=status,
        media_type="application/problem+json",
    )


class StubController:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.revision = 0
        self.instances: dict[str, DesiredInstance] = {}
        self.images: list[str] = []
        self.events: dict[int, dict[str, Any]] = {}
        self.received_seqs: list[int] = []
        self.reports: list[AgentReport] = []
        self.last_instances: list[dict[str, Any]] | None = None
        self.acked_seq = 0
        self.enrolled = 0
        self.offline = False
        self.revoked = False
        self.drop_next_report = False
        self.dropped = 0
        self.app = self._build()

    def set_instance(self, inst: DesiredInstance) -> None:
        with self.lock:
            self.revision += 1
            self.instances[inst.id] = inst.model_copy(update={"revision": self.revision})

    def set_images(self, digests: list[str]) -> None:
        with self.lock:
            self.revision += 1
            self.images = list(digests)

    def _check(self, request: Request) -> JSONResponse | None:
        if self.offline:
            return problem(503, "unavailable", "stub is offline")
        if self.revoked or request.headers.get("authorization") != f"Bearer {CREDENTIAL}":
            return problem(401, "auth", "unknown credential")
        return None

    def _build(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/agent/enroll", status_code=201)
        def enroll(body: EnrollRequest) -> Any:
            if self.offline:
                return problem(503, "unavailable", "stub is offline")
            if body.join_token != TOKEN or self.enrolled:
                return problem(401, "auth", "unknown, used or expired join token")
            self.enrolled += 1
            return EnrollResponse(
                site_id="site-1", site_name="edge-1", credential=CREDENTIAL, revision=0
            )

        @app.get("/v1/agent/desired")
        def desired_state(request: Request, since: int = 0, wait: float = 0) -> Any:
            if (refused := self._check(request)) is not None:
                return refused
            if 0 < since == self.revision:
                time.sleep(min(wait, 0.2))
                return Response(status_code=204)
            with self.lock:
                full = since == 0 or since > self.revision
                listed = [i for i in self.instances.values() if full or i.revision > since]
                return DesiredStateDoc(
                    site="edge-1",
                    revision=self.revision,
                    full=full,
                    since=0 if full else since,
                    instances=listed,
                    images=list(self.images),
                )

        @app.post("/v1/agent/report")
        def report(request: Request, body: AgentReport) -> Any:
            if (refused := self._check(request)) is not None:
                return refused
            with self.lock:
                self.reports.append(body)
                for e in body.events:
                    self.received_seqs.append(e.seq)
                    self.events.setdefault(e.seq, e.model_dump(mode="json"))
                if body.events:
                    self.acked_seq = max(self.acked_seq, max(e.seq for e in body.events))
                if body.instances is not None:
                    self.last_instances = [i.model_dump(mode="json") for i in body.instances]
                if self.drop_next_report and body.events:
                    # Stored, but the answer is lost on the way back.
                    self.drop_next_report = False
                    self.dropped += 1
                    return problem(502, "gateway", "answer lost")
                return ReportAck(
                    acked_seq=self.acked_seq, revision=self.revision, server_time=datetime.now(UTC)
                )

        return app


class ServerThread:
    """Runs an ASGI app with uvicorn on a free loopback port in a thread."""

    def __init__(self, app: FastAPI) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_config=None, lifespan="off", ws="none"
        )
        self.server = uvicorn.Server(config)  # in a thread: it leaves signals alone
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        for _ in range(500):
            if self.server.started:
                return self
            time.sleep(0.01)
        raise RuntimeError("stub controller did not start")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
