"""`cloudlet user ...`: people who sign in, and their roles in projects (admins)."""

from __future__ import annotations

from typing import Any

import typer

from cloudlet.cli._context import JsonOpt, OutputFormat, OutputOpt, ctx_of, output_format
from cloudlet.cli._output import console, emit_json, show
from cloudlet.cli._password import PasswordStdinOpt, read_password

app = typer.Typer(help="Users and their roles: admin, member or reader, per project.")

ProjectOpt = typer.Option(..., "--project", "-p", help="The project.")


def _roles(user: dict[str, Any]) -> str:
    return ", ".join(f"{r['project']}:{r['role']}" for r in user["roles"]) or "-"


COLUMNS = [
    ("NAME", lambda u: u["name"]),
    ("ROLES", _roles),
    ("CREATED", lambda u: u["created_at"]),
]


def _done(user: dict[str, Any], what: str, as_json: bool) -> None:
    if as_json:
        emit_json(user)
    else:
        console.print(f"user [bold]{user['name']}[/] {what}; roles: {_roles(user)}")


@app.command("create")
def create(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="What the user signs in with."),
    password_stdin: bool = PasswordStdinOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Create a user (admins); the password is asked for (twice), or read from stdin."""
    password = read_password(password_stdin, confirm=True)
    created = ctx_of(ctx).client().post("/v1/users", {"name": name, "password": password})
    _done(created, "created", as_json)


@app.command("list")
def list_(
    ctx: typer.Context, as_json: bool = JsonOpt, output: OutputFormat | None = OutputOpt
) -> None:
    """Every user with their roles (admins); your project's users otherwise."""
    show(ctx_of(ctx).client().get("/v1/users"), COLUMNS, output_format(output, as_json))


@app.command("grant")
def grant(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="The user."),
    project: str = ProjectOpt,
    role: str = typer.Option(..., "--role", "-r", help="admin, member or reader."),
    as_json: bool = JsonOpt,
) -> None:
    """Give a user a role in a project (replacing the one held there); they sign in again."""
    body = {"project": project, "role": role}
    _done(ctx_of(ctx).client().post(f"/v1/users/{name}/roles", body), "granted", as_json)


@app.command("revoke")
def revoke(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="The user."),
    project: str = ProjectOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Take a user's role in a project away; their sign-ins end at once."""
    _done(ctx_of(ctx).client().delete(f"/v1/users/{name}/roles/{project}"), "revoked", as_json)
