"""`cloudlet event list`: what sites reported and the controller observed, paged or followed."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import typer

from cloudlet.cli._context import JsonOpt, OutputFormat, OutputOpt, ctx_of, output_format
from cloudlet.cli._output import err_console, plain_table, show
from cloudlet.errors import InvalidInputError

app = typer.Typer(help="Events from sites and the controller.", no_args_is_help=True)

EVENT_COLUMNS = [
    ("AT", lambda e: e["at"]),
    ("SITE", lambda e: e["site"]),
    ("SEQ", lambda e: e["seq"] or "-"),
    ("KIND", lambda e: e["kind"]),
    ("INSTANCE", lambda e: e["instance"] or "-"),
    ("DATA", lambda e: ", ".join(f"{k}={v}" for k, v in e["data"].items() if k != "timings")),
]
#: The API's largest page.
MAX_LIMIT = 10_000
#: Shown without --limit.
DEFAULT_LIMIT = 50
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time(value: str | None, flag: str) -> str | None:
    """An ISO time, or a duration before now (``30s``, ``10m``, ``2h``, ``1d``), as ISO."""
    if value is None:
        return None
    if m := _RELATIVE.match(value.strip()):
        ago = timedelta(seconds=float(m[1]) * _UNIT[m[2]])
        return (datetime.now(UTC) - ago).isoformat()
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise InvalidInputError(
            f"{flag} must be an ISO time or a duration like 30s, 10m, 2h, got {value!r}"
        ) from exc
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).isoformat()


def _key(e: dict[str, Any]) -> tuple[object, ...]:
    return (e["site"], e["seq"], e["kind"], e["at"], e["instance"])


@app.command("list")
def list_(
    ctx: typer.Context,
    site: str | None = typer.Option(None, help="Only this site."),
    kind: str | None = typer.Option(
        None,
        help="Only this kind: instance.state, instance.created, usage, alarm, agent.started, "
        "site.*. Usage is written every 60 s (usage_interval_s) and when an instance stops, "
        "so right after a start there is none yet: `instance show` has the open interval.",
    ),
    instance: str | None = typer.Option(None, help="Only this instance id."),
    since: str | None = typer.Option(
        None, help="Only from this time on: ISO (2026-12-02T10:00:00Z) or a duration (10m)."
    ),
    before: str | None = typer.Option(
        None,
        help="Only before this time (ISO or duration): the page before the oldest shown.",
    ),
    limit: int | None = typer.Option(
        None,
        min=1,
        max=MAX_LIMIT,
        help=f"At most this many, the newest (default {DEFAULT_LIMIT}); says if it left some "
        "out. With --all, this many a page.",
    ),
    every: bool = typer.Option(
        False, "--all", help="Every event (in the time range): page back to the oldest."
    ),
    follow: bool = typer.Option(
        False, "--follow", "-f", help="Then print new events as they arrive, until Ctrl-C."
    ),
    interval: float = typer.Option(1.0, min=0.1, help="Seconds between two polls with --follow."),
    as_json: bool = JsonOpt,
    output: OutputFormat | None = OutputOpt,
) -> None:
    """Recent events, oldest first; --follow streams new ones (one JSON per line with --json)."""
    c = ctx_of(ctx).client()
    fmt = output_format(output, as_json)
    query = {"site": site, "kind": kind, "instance": instance}
    since_iso, before_iso = parse_time(since, "--since"), parse_time(before, "--before")
    page = limit or (MAX_LIMIT if every else DEFAULT_LIMIT)
    rows, dropped = _newest(c, query, since_iso, before_iso, page, every)
    if follow and fmt in (OutputFormat.JSON, OutputFormat.YAML):
        for e in rows:
            print(json.dumps(e, sort_keys=True, default=str), flush=True)
    else:
        show(rows, EVENT_COLUMNS, fmt, name=lambda e: f"{e['site']}/{e['seq']}")
    if dropped:
        err_console.print(
            f"[yellow]note:[/] showing the newest {page}; older events were left out "
            f"(--all for every one, --limit, or --before {rows[0]['at']} for the page before)",
            highlight=False,
        )
    if follow:
        _follow(c, query, rows, since_iso, fmt, interval)


def _newest(
    c: Any,
    query: dict[str, Any],
    since: str | None,
    until: str | None,
    limit: int,
    every: bool,
) -> tuple[list[dict[str, Any]], bool]:
    """The newest ``limit`` events (``every``: all, ``limit`` a page back), oldest first,
    and whether older ones were left out."""
    pages: list[list[dict[str, Any]]] = []
    cursor = None
    while True:
        page, cursor = c.get_page(
            "/v1/events", **query, since=since, until=until, limit=limit, cursor=cursor
        )
        pages.append(page)
        if cursor is None or not every:
            # Each page is oldest first, and each next page is older than the last.
            return [e for p in reversed(pages) for e in p], cursor is not None


def _follow(
    c: Any,
    query: dict[str, Any],
    shown: list[dict[str, Any]],
    since: str | None,
    fmt: OutputFormat,
    interval: float,
) -> None:
    """Poll for events at or after the newest shown, printing each once."""
    last = shown[-1]["at"] if shown else (since or datetime.now(UTC).isoformat())
    seen = {_key(e) for e in shown if e["at"] == last}
    while True:
        time.sleep(interval)
        rows = c.get("/v1/events", **query, since=last, limit=MAX_LIMIT)
        fresh = [e for e in rows if _key(e) not in seen]
        if not fresh:
            continue
        if fmt in (OutputFormat.JSON, OutputFormat.YAML):
            for e in fresh:
                print(json.dumps(e, sort_keys=True, default=str), flush=True)
        elif fmt is OutputFormat.NAME:
            for e in fresh:
                print(f"{e['site']}/{e['seq']}", flush=True)
        else:
            lines = plain_table(fresh, EVENT_COLUMNS).splitlines()[1:]  # no second header
            print("\n".join(lines), flush=True)
        newest = max(e["at"] for e in fresh)
        if newest != last:
            last, seen = newest, set()
        seen |= {_key(e) for e in rows if e["at"] == last}
