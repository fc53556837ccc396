"""`cloudlet project ...`: the tenants (admins create them)."""

from __future__ import annotations

import typer

from cloudlet.cli import quota
from cloudlet.cli._context import JsonOpt, OutputFormat, OutputOpt, ctx_of, output_format
from cloudlet.cli._output import console, emit_json, show

app = typer.Typer(help="Projects: the tenants apps, images and instances belong to.")
app.add_typer(quota.app, name="quota")

COLUMNS = [("NAME", lambda p: p["name"]), ("CREATED", lambda p: p["created_at"])]


@app.command("create")
def create(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Project name (lowercase, digits, dashes)."),
    as_json: bool = JsonOpt,
) -> None:
    """Create a project (admins)."""
    created = ctx_of(ctx).client().post("/v1/projects", {"name": name})
    if as_json:
        emit_json(created)
    else:
        console.print(f"project [bold]{created['name']}[/] created")


@app.command("list")
def list_(
    ctx: typer.Context, as_json: bool = JsonOpt, output: OutputFormat | None = OutputOpt
) -> None:
    """Every project (admins); your own otherwise."""
    show(ctx_of(ctx).client().get("/v1/projects"), COLUMNS, output_format(output, as_json))
