"""`cloudlet agent run`: the site daemon; `cloudlet agent supervise`: the same under a
supervisor that restarts it, upgrades it and rolls a failed upgrade back."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import typer

from cloudlet.cli._context import ctx_of

if TYPE_CHECKING:
    from cloudlet.settings import AgentSettings

app = typer.Typer(help="The site agent.", no_args_is_help=True)

F = TypeVar("F", bound=Callable[..., Any])


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
    ca_file: Path | None = typer.Option(
        None, help="The controller's CA certificate (PEM), trusted at join."
    ),
    ca_fingerprint: str | None = typer.Option(
        None, help="Or the SHA-256 fingerprint of the controller's CA, checked at join."
    ),
    insecure: bool | None = typer.Option(
        None,
        "--insecure",
        help="Plain HTTP, no site certificate, plain site-local API: development only.",
    ),
) -> None:
    """Enroll (first start) and run the site agent until SIGTERM / Ctrl-C."""
    from cloudlet.agent import run_agent
    from cloudlet.agent.upgrade.supervisor import SUPERVISED_ENV

    settings = _settings(ctx)
    # One line per request at INFO drowns the agent's own log.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    supervised = os.environ.get(SUPERVISED_ENV) == "1"
    code = asyncio.run(run_agent(settings, supervised=supervised))
    if code:
        raise typer.Exit(code)


def _same_options(source: Callable[..., Any]) -> Callable[[F], F]:
    """Give the decorated command ``source``'s options (Typer reads the signature)."""

    def apply(command: F) -> F:
        command.__signature__ = inspect.signature(source)  # type: ignore[attr-defined]
        command.__annotations__ = dict(source.__annotations__)
        return command

    return apply


@app.command("supervise")
@_same_options(run)
def supervise(ctx: typer.Context, **_options: Any) -> None:
    """Run the agent under a supervisor (the process a service manager runs): it restarts
    the agent when it exits, starts an upgraded install when the agent staged one, and
    rolls back by itself when that install is not healthy within upgrade_deadline_s."""
    from cloudlet.agent.upgrade.supervisor import Supervisor

    settings = _settings(ctx)
    args = [*_flags(ctx.find_root()), "agent", "run", *_flags(ctx)]
    supervisor = Supervisor(settings.data_dir, args, backoff_max_s=settings.backoff_max_s)
    raise typer.Exit(supervisor.run())


def _settings(ctx: typer.Context) -> AgentSettings:
    """The agent's settings from the command's options (``run``'s, which ``supervise``
    shares: so they are read from ``ctx``), with logging configured."""
    options = ctx.params
    settings = (
        ctx_of(ctx)
        .settings(
            agent={
                "controller_url": options["controller"],
                "join_token": options["join"],
                "data_dir": options["data_dir"],
                "driver": options["driver"],
                "local_port": options["local_port"],
                "local_host": options["local_host"],
                "keep_workloads": options["keep_workloads"],
                "report_interval_s": options["report_interval"],
                "log_level": options["log_level"],
                "ca_file": options["ca_file"],
                "ca_fingerprint": options["ca_fingerprint"],
                "insecure": options["insecure"],
            }
        )
        .agent
    )
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return settings


def _flags(ctx: typer.Context) -> list[str]:
    """The options given to ``ctx``'s command, as flags again (the supervisor passes
    them on to ``agent run``)."""
    out: list[str] = []
    for param in ctx.command.params:
        value = ctx.params.get(param.name or "")
        if param.param_type_name != "option" or value is None:
            continue
        flag, off = param.opts[0], getattr(param, "secondary_opts", [])
        if getattr(param, "is_flag", False):
            out += [flag] if value else off[:1]
        else:
            out += [flag, str(value)]
    return out
