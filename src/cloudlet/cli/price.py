"""`cloudlet price`: the provider's price sheet (default, per project, per app)."""

from __future__ import annotations

from typing import Any

import typer

from cloudlet.cli._context import JsonOpt, OutputFormat, OutputOpt, ctx_of, output_format
from cloudlet.cli._output import show, show_one
from cloudlet.errors import InvalidInputError

app = typer.Typer(
    help="The price sheet: free, or prices per hour and per GiB.", no_args_is_help=True
)

_COLUMNS = [
    ("PROJECT", lambda p: p["project"] or "(default)"),
    ("APP", lambda p: p["app"] or "-"),
    ("CURRENCY", lambda p: p["currency"]),
    ("FREE", lambda p: "yes" if p["free"] else "no"),
    ("INSTANCE-H", lambda p: p["instance_hour"]),
    ("VCPU-H", lambda p: p["vcpu_hour"]),
    ("GIB-H", lambda p: p["gib_hour"]),
    ("GIB-FETCHED", lambda p: p["gib_fetched"]),
]


def _path(project: str | None, app_name: str | None) -> str:
    if app_name and not project:
        raise InvalidInputError("--app needs --project (app names are per project)")
    if project is None:
        return "/v1/prices/default"
    return f"/v1/prices/projects/{project}" + (f"/apps/{app_name}" if app_name else "")


ProjectOpt = typer.Option(None, "--project", "-p", help="A project's plan (none: the default).")
AppOpt = typer.Option(None, "--app", help="An app's plan (with --project).")


@app.command("set")
def set_(
    ctx: typer.Context,
    currency: str = typer.Option(..., help="ISO 4217 code, e.g. EUR."),
    project: str | None = ProjectOpt,
    app_name: str | None = AppOpt,
    free: bool = typer.Option(False, "--free", help="Charge nothing."),
    instance_hour: str | None = typer.Option(None, help="Per instance-hour, e.g. 0.01."),
    vcpu_hour: str | None = typer.Option(None, help="Per vCPU-hour."),
    gib_hour: str | None = typer.Option(None, help="Per GiB-hour of memory."),
    gib_fetched: str | None = typer.Option(None, help="Per GiB of artifacts sent to sites."),
    as_json: bool = JsonOpt,
    output: OutputFormat | None = OutputOpt,
) -> None:
    """Set the default plan, a project's, or an app's (the most specific one applies)."""
    body: dict[str, Any] = {"currency": currency}
    if free:
        body["free"] = True
    for key, value in (
        ("instance_hour", instance_hour),
        ("vcpu_hour", vcpu_hour),
        ("gib_hour", gib_hour),
        ("gib_fetched", gib_fetched),
    ):
        if value is not None:
            body[key] = value
    plan = ctx_of(ctx).client().request("PUT", _path(project, app_name), json=body)
    show_one(plan, output_format(output, as_json))


@app.command("list")
def list_(
    ctx: typer.Context, as_json: bool = JsonOpt, output: OutputFormat | None = OutputOpt
) -> None:
    """The sheet (admins), or the plans that may apply to your project."""
    plans = ctx_of(ctx).client().get("/v1/prices")
    show(
        plans,
        _COLUMNS,
        output_format(output, as_json),
        name=lambda p: _path(p["project"], p["app"]),
    )


@app.command("delete")
def delete(
    ctx: typer.Context, project: str | None = ProjectOpt, app_name: str | None = AppOpt
) -> None:
    """Drop a plan: the next less specific one applies again."""
    ctx_of(ctx).client().delete(_path(project, app_name))
