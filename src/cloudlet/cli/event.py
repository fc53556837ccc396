"""`cloudlet event list`: what sites reported and the controller observed."""

from __future__ import annotations

import typer

from cloudlet.cli._context import JsonOpt, ctx_of
from cloudlet.cli._output import show

app = typer.Typer(help="Events from sites and the controller.", no_args_is_help=True)

EVENT_COLUMNS = [
    ("AT", lambda e: e["at"]),
    ("SITE", lambda e: e["site"]),
    ("SEQ", lambda e: e["seq"] or "-"),
    ("KIND", lambda e: e["kind"]),
    ("INSTANCE", lambda e: (e["instance"] or "-")[:8]),
    ("DATA", lambda e: ", ".join(f"{k}={v}" for k, v in e["data"].items() if k != "timings")),
]


@app.command("list")
def list_(
    ctx: typer.Context,
    site: str | None = typer.Option(None, help="Only this site."),
    kind: str | None = typer.Option(None, help="Only this kind (usage, instance.state, ...)."),
    instance: str | None = typer.Option(None, help="Only this instance id."),
    limit: int = typer.Option(50, help="At most this many, newest."),
    as_json: bool = JsonOpt,
) -> None:
    """Recent events, oldest first."""
    rows = (
        ctx_of(ctx).client().get("/v1/events", site=site, kind=kind, instance=instance, limit=limit)
    )
    show(rows, EVENT_COLUMNS, as_json)
