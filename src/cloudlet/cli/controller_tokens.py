"""`cloudlet controller token create`: API tokens for automation and project members.

It works on the controller's database directly, as `controller serve` does, so it
runs where the controller's data directory (or database URL) is: an operator's
action, not an API call.
"""

from __future__ import annotations

from pathlib import Path

import typer

from cloudlet.cli._context import ctx_of
from cloudlet.cli._output import console

app = typer.Typer(help="API tokens, made on the controller's own host.", no_args_is_help=True)


@app.command("create")
def create(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="What the token is for, e.g. ci-deploy."),
    project: str = typer.Option("admin", help="The project it acts in (created if new)."),
    role: str = typer.Option("member", help="admin, member or reader."),
    data_dir: Path | None = typer.Option(None, help="The controller's data directory."),
    database_url: str | None = typer.Option(None, help="The controller's database URL."),
) -> None:
    """Create a token and print its secret (shown once; only its hash is kept)."""
    from cloudlet.controller.app import open_state
    from cloudlet.controller.services.auth import create_api_token

    settings = (
        ctx_of(ctx)
        .settings(controller={"data_dir": data_dir, "database_url": database_url})
        .controller
    )
    state = open_state(settings)
    try:
        with state.sessions.begin() as session:
            secret = create_api_token(session, name, project, role)
    finally:
        state.close()
    console.print(secret, soft_wrap=True, highlight=False)
