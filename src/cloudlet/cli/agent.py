"""`cloudlet agent run`: the site daemon."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import typer

from cloudlet.cli._context import ctx_of

app = typer.Typer(help="The site agent.", no_args_is_help=True)


@app.command("run")
def run(
    ctx: typer.Context,
    controller: str | None = typer.Option(None, help="Controller base URL."),
    join: str | None = typer.Option(None, "--join", help="One-time join token (first start)."),
    data_dir: Path | None = typer.Option(None, help="Local state (default ./cloudlet-agent)."),
    driver: str | None = typer.Option(
        None, help="Compute driver: process, fake (default process)."
    ),
    local_port: int | None = typer.Option(
        None, help="Site-local API port (default 7480; 0: any free one)."
    ),
    local_host: str | None = typer.Option(
        None, help="Site-local API address (default 127.0.0.1); beyond loopback it needs a token."
    ),
    keep_workloads: bool | None = typer.Option(
        None, "--keep-workloads/--stop-workloads", help="Leave workloads running on exit."
    ),
    report_interval: float | None = typer.Option(
        None, help="Seconds between reports (default 10)."
    ),
    log_level: str | None = typer.Option(None, help="debug, info, warning (default info)."),
) -> None:
    """Enroll (first start) and run the site agent until SIGTERM / Ctrl-C."""
    from cloudlet.agent import run_agent

    settings = (
        ctx_of(ctx)
        .settings(
            agent={
                "controller_url": controller,
                "join_token": join,
                "data_dir": data_dir,
                "driver": driver,
                "local_port": local_port,
                "local_host": local_host,
                "keep_workloads": keep_workloads,
                "report_interval_s": report_interval,
                "log_level": log_level,
            }
        )
        .agent
    )
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # One line per request at INFO drowns the agent's own log.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    asyncio.run(run_agent(settings))
