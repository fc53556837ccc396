"""The `cloudlet` command: one Typer app with a sub-command group per noun.

Each group's module is imported only when that group runs (or its own help is
asked for): the server stack, numpy and the agent stay out of `cloudlet --help`
and of a list command's start-up. The root help lists the groups from the table
below without importing them.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import click
import typer
from typer.core import TyperGroup

from cloudlet.cli._context import CliContext
from cloudlet.errors import CloudletError

# group name -> (module under cloudlet.cli exposing `app`, one-line help for the root help).
GROUPS: dict[str, tuple[str, str]] = {
    "controller": ("controller", "The central controller."),
    "agent": ("agent", "The site agent."),
    "site": ("site", "Edge sites."),
    "app": ("app", "Applications in the catalog."),
    "instance": ("instance", "App instances running at sites."),
    "event": ("event", "Events from sites and the controller."),
    "alarm": ("alarm", "Alarms: raised and cleared once each, history kept."),
    "client": ("client", "Act as a client: find the best cloudlet, start or join an app."),
    "overlay": ("overlay", "Create, inspect, verify and apply VM overlays."),
    "image": ("image", "Base images."),
    "key": ("key", "Publisher keys: sign images and overlays."),
    "upgrade": ("upgrade", "Upgrade the sites' agents in waves; follow app rollouts."),
    "usage": ("usage", "Metered usage and its cost."),
    "price": ("price", "The price sheet: free, or prices per hour and per GiB."),
    "demo": ("demo", "Run the demo: three sites, two apps, a link cut and the catch-up."),
    "project": ("project", "Projects: the tenants apps, images and instances belong to."),
    "user": ("user", "Users and their roles: admin, member or reader, per project."),
    "api-key": ("api_key", "API keys: tokens for automation, until revoked."),
}
# command name -> (module under cloudlet.cli, its Typer of that one command, one-line help).
COMMANDS: dict[str, tuple[str, str, str]] = {
    "login": ("login", "login_app", "Sign in as a user; the token is kept for this controller."),
    "logout": ("login", "logout_app", "Sign out of this controller."),
}


_COMPLETION = {"install_completion", "show_completion"}


class LazyGroup(TyperGroup):
    """A root group whose sub-groups are built from their modules on first use."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self._listing = False

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*super().list_commands(ctx), *GROUPS, *COMMANDS]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in COMMANDS:
            return self._command(cmd_name)
        if cmd_name not in GROUPS:
            return super().get_command(ctx, cmd_name)
        module, summary = GROUPS[cmd_name]
        if self._listing:  # the root help needs only the name and the summary
            return click.Command(cmd_name, help=summary)
        if cmd_name not in self.commands:
            sub = importlib.import_module(f"cloudlet.cli.{module}").app
            command = typer.main.get_group(sub)
            command.name = cmd_name
            # Built on its own, a group gets the root's completion options: drop them.
            command.params = [p for p in command.params if p.name not in _COMPLETION]
            self.commands[cmd_name] = command
        return self.commands[cmd_name]

    def _command(self, cmd_name: str) -> click.Command:
        module, attr, summary = COMMANDS[cmd_name]
        if self._listing:
            return click.Command(cmd_name, help=summary)
        if cmd_name not in self.commands:
            sub = getattr(importlib.import_module(f"cloudlet.cli.{module}"), attr)
            command = typer.main.get_command(sub)
            command.name = cmd_name
            command.params = [p for p in command.params if p.name not in _COMPLETION]
            self.commands[cmd_name] = command
        return self.commands[cmd_name]

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False


app = typer.Typer(
    name="cloudlet",
    cls=LazyGroup,
    help="Cloudlet: run applications at the edge of the network.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def root(
    ctx: typer.Context,
    config: Path | None = typer.Option(
        None, "--config", envvar="CLOUDLET_CONFIG", help="TOML settings file."
    ),
    url: str | None = typer.Option(None, "--url", help="Controller URL (env CLOUDLET_URL)."),
    token: str | None = typer.Option(None, "--token", help="API token (env CLOUDLET_TOKEN)."),
) -> None:
    ctx.obj = CliContext(config_file=config, url=url, token=token)


def main() -> None:
    """Entry point: any Cloudlet error becomes one line on stderr and exit code 1."""
    try:
        app()
    except CloudletError as exc:
        from cloudlet.cli._output import err_console

        err_console.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
