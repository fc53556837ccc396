"""`cloudlet controller serve`: run the controller API; `controller token`: API tokens."""

from __future__ import annotations

import functools
import gc
import logging
import socket
import sys
from pathlib import Path
from typing import Any

import typer

from cloudlet.cli import controller_tokens
from cloudlet.cli._context import ctx_of
from cloudlet.cli._output import err_console
from cloudlet.settings import ControllerSettings

app = typer.Typer(help="The central controller.", no_args_is_help=True)
app.add_typer(controller_tokens.app, name="token")


@app.command("serve")
def serve(
    ctx: typer.Context,
    host: str | None = typer.Option(None, help="Address to listen on (default 127.0.0.1)."),
    port: int | None = typer.Option(None, help="Port to listen on, 0 for any (default 8080)."),
    data_dir: Path | None = typer.Option(
        None, help="Database, admin token (default ./cloudlet-data)."
    ),
    database_url: str | None = typer.Option(
        None, help="SQLAlchemy URL (default SQLite in data dir)."
    ),
    offline_grace: float | None = typer.Option(
        None, help="Seconds of silence before offline (default 30)."
    ),
    port_file: Path | None = typer.Option(None, help="Write the bound port here once listening."),
    log_level: str | None = typer.Option(None, help="debug, info, warning (default info)."),
    workers: int = typer.Option(
        1, min=1, help="Processes serving the one port (each a replica of the controller)."
    ),
    insecure: bool | None = typer.Option(
        None,
        "--insecure",
        help="Plain HTTP, agents without client certificates: development only.",
    ),
) -> None:
    """Serve the API (OpenAPI at /openapi.json, docs at /docs)."""
    import uvicorn

    from cloudlet.controller.app import create_app, open_state
    from cloudlet.controller.peer import uvicorn_tls

    settings = (
        ctx_of(ctx)
        .settings(
            controller={
                "host": host,
                "port": port,
                "data_dir": data_dir,
                "database_url": database_url,
                "offline_grace_s": offline_grace,
                "log_level": log_level,
                "tls": {"insecure": True} if insecure else None,
            }
        )
        .controller
    )
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if workers == 1:
        application: Any = create_app(settings)
        ca = application.state.cloudlet.ca
        _tune_runtime()
    else:
        # Migrate and bootstrap once here, rather than in workers racing to do it.
        first = open_state(settings)
        ca = first.ca
        first.close()
        application = functools.partial(worker_app, settings)
    tls = {} if settings.tls.insecure else uvicorn_tls(settings, ca)
    sock = socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((settings.host, settings.port))
    bound = sock.getsockname()[1]
    if port_file is not None:
        tmp = port_file.with_suffix(".tmp")
        tmp.write_text(f"{bound}\n")
        tmp.replace(port_file)
    scheme = "http" if settings.tls.insecure else "https"
    err_console.print(
        f"controller listening on {scheme}://{settings.host}:{bound} "
        f"(admin token in {settings.data_dir / 'admin.token'}"
        + ("" if settings.tls.insecure else f", CA fingerprint {ca.fingerprint}")
        + ")"
    )
    config = uvicorn.Config(
        application,
        factory=workers > 1,
        workers=workers,
        log_level=settings.log_level.lower(),
        access_log=False,
        backlog=4096,
        timeout_keep_alive=75,
        # Long polls would hold a graceful shutdown for their whole wait; agents
        # simply poll again, so cut them after a short grace.
        timeout_graceful_shutdown=2,
        **tls,
    )
    if workers == 1:
        uvicorn.Server(config).run(sockets=[sock])
    else:
        from uvicorn.supervisors import Multiprocess

        Multiprocess(config, sockets=[sock]).run()


def worker_app(settings: ControllerSettings) -> Any:
    """The app of one worker process (``--workers``): a replica of the controller,
    sharing the database and the listening socket with its siblings."""
    from cloudlet.controller.app import create_app

    application = create_app(settings)
    _tune_runtime()
    return application


def _tune_runtime() -> None:
    """Keep pauses short in a server with thousands of agents and open long polls.

    What exists at startup (modules, schemas, routes, ~100k objects) moves to the
    collector's permanent generation, so no collection walks it again; and young
    collections run ten times less often, so request-scoped objects are mostly
    freed by their reference counts before a collection could promote them.

    The event loop keeps the GIL busy; a worker thread (a database write) must
    take it back after every call into the database, and waits up to the switch
    interval (5 ms by default) each time. At 0.5 ms a write transaction stops
    taking hundreds of milliseconds of waiting for the GIL.
    """
    sys.setswitchinterval(0.0005)
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(7000, gen1, gen2)
