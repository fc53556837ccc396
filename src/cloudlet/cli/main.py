"""The `cloudlet` command: one Typer app with a sub-command group per noun."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import typer

from cloudlet.cli._context import CliContext
from cloudlet.cli._output import err_console
from cloudlet.errors import CloudletError

app = typer.Typer(
    name="cloudlet",
    help="Cloudlet: run applications at the edge of the network.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

# (module under cloudlet.cli, group name); each module exposes `app`.
_GROUPS: list[tuple[str, str]] = [
    ("controller", "controller"),
    ("agent", "agent"),
    ("site", "site"),
    ("app", "app"),
    ("instance", "instance"),
    ("event", "event"),
    ("client", "client"),
    ("overlay", "overlay"),
    ("image", "image"),
    ("demo", "demo"),
]

for _module, _name in _GROUPS:
    _sub = importlib.import_module(f"cloudlet.cli.{_module}")
    app.add_typer(_sub.app, name=_name)


@app.callback()
def root(
    ctx: typer.Context,
    config: Path | None = typer.Option(
        None, "--config", envvar="CLOUDLET_CONFIG", help="TOML settings file."
    ),
    url: str | None = typer.Option(None, "--url", help="Controller URL [env CLOUDLET_URL]."),
    token: str | None = typer.Option(None, "--token", help="API token [env CLOUDLET_TOKEN]."),
) -> None:
    ctx.obj = CliContext(config_file=config, url=url, token=token)


def main() -> None:
    """Entry point: any Cloudlet error becomes one line on stderr and exit code 1."""
    try:
        app()
    except CloudletError as exc:
        err_console.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
