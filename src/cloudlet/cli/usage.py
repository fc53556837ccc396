"""`cloudlet usage report`: a project's metered usage and its cost over a period."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime
from typing import Any

import typer

from cloudlet.cli._context import ctx_of
from cloudlet.cli._output import console, emit_json, plain_table
from cloudlet.errors import InvalidInputError

app = typer.Typer(help="Metered usage and its cost.", no_args_is_help=True)

CSV_FIELDS = [
    "section", "app", "site", "kind", "artifact", "seq", "recorded_at", "received_at",
    "instance_hours", "vcpu_hours", "gib_hours", "bytes", "gib", "plan", "currency", "cost",
]  # fmt: skip


def parse_bound(value: str, flag: str) -> str:
    """A date (midnight UTC) or an ISO date and time (UTC unless it has an offset)."""
    text = value.strip()
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            return datetime(day.year, day.month, day.day, tzinfo=UTC).isoformat()
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise InvalidInputError(
            f"{flag} must be a date (2026-12-01) or an ISO time (2026-12-01T08:00:00Z), "
            f"got {value!r}"
        ) from exc
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).isoformat()


def report_csv(report: dict[str, Any]) -> str:
    """The report as CSV: one row per usage line (``run``), fetch line (``fetch``) and
    total (``total``); then the late records (``late``), which the run rows already
    include (sum the run, fetch or total rows, never the late ones with them)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for line in report["lines"]:
        plan = line["plan"]
        writer.writerow(
            {"section": "run", **line, "plan": plan["scope"], "currency": plan["currency"] or ""}
        )
    for line in report["fetches"]:
        plan = line["plan"]
        writer.writerow(
            {"section": "fetch", **line, "plan": plan["scope"], "currency": plan["currency"] or ""}
        )
    for total in report["totals"]:
        writer.writerow({"section": "total", **total, "currency": total["currency"] or ""})
    for late in report["late"]:
        writer.writerow({"section": "late", **late, "kind": "", "currency": late["currency"] or ""})
    return out.getvalue()


_RUN = [
    ("APP", lambda r: r["app"]),
    ("SITE", lambda r: r["site"]),
    ("INSTANCE-H", lambda r: r["instance_hours"]),
    ("VCPU-H", lambda r: r["vcpu_hours"]),
    ("GIB-H", lambda r: r["gib_hours"]),
    ("PLAN", lambda r: r["plan"]["scope"]),
    ("COST", lambda r: f"{r['cost']} {r['plan']['currency'] or ''}".strip()),
]
_FETCH = [
    ("SITE", lambda r: r["site"]),
    ("KIND", lambda r: r["kind"]),
    ("ARTIFACT", lambda r: r["name"] or r["artifact"][:16]),
    ("GIB", lambda r: r["gib"]),
    ("PLAN", lambda r: r["plan"]["scope"]),
    ("COST", lambda r: f"{r['cost']} {r['plan']['currency'] or ''}".strip()),
]
_LATE = [
    ("SITE", lambda r: r["site"]),
    ("SEQ", lambda r: r["seq"]),
    ("APP", lambda r: r["app"]),
    ("RECORDED", lambda r: r["recorded_at"]),
    ("ARRIVED", lambda r: r["received_at"]),
    ("INSTANCE-H", lambda r: r["instance_hours"]),
    ("COST", lambda r: f"{r['cost']} {r['currency'] or ''}".strip()),
]


def _print(report: dict[str, Any]) -> None:
    state = "closed" if report["closed"] else "open (still running)"
    print(
        f"project {report['project']}: {report['from']} .. {report['to']} ({state}), "
        f"as of {report['as_of']}"
    )
    for title, rows, columns in (
        ("usage", report["lines"], _RUN),
        ("bytes fetched by sites", report["fetches"], _FETCH),
    ):
        print(f"\n{title}:")
        print(plain_table(rows, columns) if rows else "  none")
    totals = ", ".join(f"{t['cost']} {t['currency'] or ''}".strip() for t in report["totals"])
    print(f"\ntotal: {totals or '0'}")
    if report["late"]:
        print("\nlate: records that arrived after the period ended (included above):")
        print(plain_table(report["late"], _LATE))
        if report["late_truncated"]:
            console.print("[yellow]note:[/] more late records than listed", highlight=False)


@app.command("report")
def report(
    ctx: typer.Context,
    project: str = typer.Option(..., "--project", "-p", help="The project."),
    since: str = typer.Option(..., "--from", help="Start: a date (midnight UTC) or ISO time."),
    until: str = typer.Option(..., "--to", help="End (excluded): a date or ISO time."),
    as_of: str | None = typer.Option(
        None, "--as-of", help="The report as it was then (records arrived by then)."
    ),
    as_csv: bool = typer.Option(False, "--csv", help="Print CSV."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Per app and site: instance-, vCPU- and GiB-hours and their cost; bytes fetched by
    sites; the total; and the records that arrived after the period ended."""
    params = {
        "project": project,
        "from": parse_bound(since, "--from"),
        "to": parse_bound(until, "--to"),
        "as_of": parse_bound(as_of, "--as-of") if as_of else None,
    }
    data = ctx_of(ctx).client().get("/v1/usage", **params)
    if as_json:
        emit_json(data)
    elif as_csv:
        print(report_csv(data), end="")
    else:
        _print(data)
