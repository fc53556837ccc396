"""`cloudlet alarm list`: active alarms or their history (raised, cleared, by whom)."""

from __future__ import annotations

from typing import Any

import typer

from cloudlet.cli._context import JsonOpt, OutputFormat, OutputOpt, ctx_of, output_format
from cloudlet.cli._output import show

app = typer.Typer(help="Alarms: raised and cleared once each, history kept.", no_args_is_help=True)

ALARM_COLUMNS = [
    ("ALARM", lambda a: a["alarm_id"]),
    ("SEVERITY", lambda a: a["severity"]),
    ("ENTITY", lambda a: a["entity"]),
    ("RAISED", lambda a: a["raised_at"]),
    ("CLEARED", lambda a: a["cleared_at"] or "active"),
    ("SOURCE", lambda a: a["source"]),
    ("REASON", lambda a: a["reason"] or "-"),
]


@app.command("list")
def list_(
    ctx: typer.Context,
    active: bool = typer.Option(False, "--active", help="Only alarms not cleared yet."),
    site: str | None = typer.Option(None, help="Only alarms about this site and its instances."),
    limit: int = typer.Option(100, min=1, max=10_000, help="At most this many, newest first."),
    as_json: bool = JsonOpt,
    output: OutputFormat | None = OutputOpt,
) -> None:
    """Alarms, newest first: each raised once and cleared once (CLEARED: active)."""
    c = ctx_of(ctx).client()
    rows: list[dict[str, Any]] = c.get(
        "/v1/alarms", active="true" if active else None, site=site, limit=limit
    )
    show(rows, ALARM_COLUMNS, output_format(output, as_json), name=lambda a: a["id"])
