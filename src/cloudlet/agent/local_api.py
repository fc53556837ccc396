"""The site-local HTTP API: health and instance endpoints for clients, served offline too.

It runs inside the agent's event loop (uvicorn without its own signal handling:
the agent owns SIGTERM/SIGINT) and writes the port it bound to
``data_dir/local-api.port`` so that tools can find it when the port was 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI

from cloudlet.agent import actual
from cloudlet.agent.store import Store
from cloudlet.schemas import ActualInstance

log = logging.getLogger(__name__)

PORT_FILE = "local-api.port"


def create_app(store: Store, health: Callable[[], dict[str, Any]]) -> FastAPI:
    """The local API over the agent's store; ``health`` builds the /healthz body."""
    app = FastAPI(title="Cloudlet site agent", docs_url=None, redoc_url=None)

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return health()

    @app.get("/v1/local/instances", response_model=list[ActualInstance])
    def list_instances() -> list[ActualInstance]:
        return [row.to_wire() for row in actual.list_all(store)]

    return app


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # The agent handles signals itself and stops this server in order.
        yield


class LocalApi:
    """Serves ``app`` on ``host:port`` as a task of the running event loop."""

    def __init__(self, app: FastAPI, host: str, port: int, data_dir: Path) -> None:
        self.host = host
        self.port = port
        self.port_file = data_dir / PORT_FILE
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off", ws="none")
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> int:
        """Bind, start serving and record the bound port; returns it."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
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
        log.info("site-local API on http://%s:%d", self.host, self.port)
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
