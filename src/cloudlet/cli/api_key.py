"""`cloudlet api-key ...`: bearer tokens for automation, with a role in a project."""

from __future__ import annotations

import typer

from cloudlet.cli._context import JsonOpt, OutputFormat, OutputOpt, ctx_of, output_format
from cloudlet.cli._output import console, emit_json, show

app = typer.Typer(help="API keys: tokens for automation, until revoked.")

COLUMNS = [
    ("ID", lambda k: k["id"]),
    ("NAME", lambda k: k["name"]),
    ("PROJECT", lambda k: k["project"]),
    ("ROLE", lambda k: k["role"]),
    ("BY", lambda k: k["created_by"] or "-"),
    ("CREATED", lambda k: k["created_at"]),
]


@app.command("create")
def create(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="What it is for, e.g. ci-deploy."),
    project: str = typer.Option(..., "--project", "-p", help="The project it acts in."),
    role: str = typer.Option("member", "--role", "-r", help="admin, member or reader."),
    as_json: bool = JsonOpt,
) -> None:
    """Make a key and print its secret (shown once). Members: for their own project."""
    body = {"name": name, "project": project, "role": role}
    created = ctx_of(ctx).client().post("/v1/api-keys", body)
    if as_json:
        emit_json(created)
    else:
        print(created["token"])


@app.command("list")
def list_(
    ctx: typer.Context,
    project: str | None = typer.Option(None, help="Only this project's (admins)."),
    as_json: bool = JsonOpt,
    output: OutputFormat | None = OutputOpt,
) -> None:
    """The keys of your project (admins: every project); never their secrets."""
    rows = ctx_of(ctx).client().get("/v1/api-keys", project=project)
    show(rows, COLUMNS, output_format(output, as_json))


@app.command("revoke")
def revoke(ctx: typer.Context, key_id: str = typer.Argument(..., help="The key's id.")) -> None:
    """Revoke a key: it stops working at once."""
    ctx_of(ctx).client().delete(f"/v1/api-keys/{key_id}")
    console.print(f"revoked {key_id}")
