"""`cloudlet site ...`: register, list, show, decommission sites."""

from __future__ import annotations

import time
from typing import Any

import typer

from cloudlet.cli._context import (
    JsonOpt,
    OutputFormat,
    OutputOpt,
    confirm,
    ctx_of,
    output_format,
    parse_pairs,
)
from cloudlet.cli._output import ago, console, emit_json, human_bytes, pct, show, show_one
from cloudlet.cli._paging import AllOpt, collect, more_note
from cloudlet.errors import CloudletError

app = typer.Typer(help="Edge sites.", no_args_is_help=True)

SITE_COLUMNS = [
    ("NAME", lambda s: s["name"]),
    ("REGION", lambda s: s["region"]),
    ("STATE", lambda s: s["state"]),
    ("AVAILABILITY", lambda s: s["availability"]),
    ("LAST SEEN", lambda s: ago(s["last_seen"])),
    ("SYNC", lambda s: s["sync_status"]),
    ("LAG", lambda s: s["revision_lag"]),
    ("INSTANCES", lambda s: s["instances"]),
    ("CPU", lambda s: pct((s.get("utilization") or {}).get("cpu"))),
    ("MEM", lambda s: pct((s.get("utilization") or {}).get("memory"))),
    ("IN/OUT", lambda s: f"{human_bytes(s['bytes_in'])}/{human_bytes(s['bytes_out'])}"),
]
WIDE_COLUMNS = [
    ("ID", lambda s: s["id"]),
    ("REVISION", lambda s: f"{s['applied_revision']}/{s['revision']}"),
    ("LAT,LON", lambda s: "-" if s["latitude"] is None else f"{s['latitude']},{s['longitude']}"),
    ("AGENT", lambda s: s.get("agent_version")),
    ("LABELS", lambda s: s["labels"]),
]


@app.command("add")
def add(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Site name (lowercase, digits, dashes)."),
    region: str = typer.Option("default", help="Region the site belongs to."),
    lat: float | None = typer.Option(None, "--lat", help="Latitude in degrees."),
    lon: float | None = typer.Option(None, "--lon", help="Longitude in degrees."),
    label: list[str] | None = typer.Option(None, "--label", "-l", help="key=value, repeatable."),
    token_ttl: int = typer.Option(3600, help="Join token lifetime in seconds."),
    as_json: bool = JsonOpt,
) -> None:
    """Register a site and print the one-time join token for its agent.

    With --json the answer is {"site": {...}, "join_token": {"site", "token",
    "expires_at"}}: the token is at .join_token.token (see docs/api.md).
    """
    c = ctx_of(ctx).client()
    body = {
        "name": name,
        "region": region,
        "latitude": lat,
        "longitude": lon,
        "labels": parse_pairs(label),
        "join_token_ttl_s": token_ttl,
    }
    created = c.post("/v1/sites", body)
    if as_json:
        emit_json(created)
        return
    token = created["join_token"]
    console.print(f"site [bold]{name}[/] registered; join token (expires {token['expires_at']}):")
    # Plain prints: the token and the command are copied, so never wrapped or styled.
    print(token["token"])
    print("start its agent with:")
    print(f"  cloudlet agent run --controller {c.url} --join {token['token']}")


@app.command("token")
def token(
    ctx: typer.Context, name: str, ttl: int = typer.Option(3600), as_json: bool = JsonOpt
) -> None:
    """Create a new one-time join token for a site (e.g. to re-install its agent)."""
    created = ctx_of(ctx).client().post(f"/v1/sites/{name}/join-tokens", {"ttl_s": ttl})
    if as_json:
        emit_json(created)
    else:
        print(created["token"])


@app.command("list")
def list_(
    ctx: typer.Context,
    region: str | None = typer.Option(None, help="Only sites in this region."),
    availability: str | None = typer.Option(
        None, help="Only sites this available: online, offline or unknown."
    ),
    label: list[str] | None = typer.Option(
        None, "--label", "-l", help="Only sites with this key=value label (repeatable)."
    ),
    limit: int | None = typer.Option(
        None, min=1, help="At most this many, by name (default: the API's first page, 1000)."
    ),
    every: bool = AllOpt,
    as_json: bool = JsonOpt,
    output: OutputFormat | None = OutputOpt,
) -> None:
    """Sites by name with availability, sync status and traffic."""
    query = {"region": region, "availability": availability, "label": label or None}
    rows, more = collect(ctx_of(ctx).client(), "/v1/sites", limit, every, **query)
    show(rows, SITE_COLUMNS, output_format(output, as_json), wide=WIDE_COLUMNS)
    if more:
        more_note("sites", len(rows), "cloudlet site list")


@app.command("show")
def show_(
    ctx: typer.Context,
    name: str,
    as_json: bool = JsonOpt,
    output: OutputFormat | None = OutputOpt,
) -> None:
    """One site in detail."""
    site: dict[str, Any] = ctx_of(ctx).client().get(f"/v1/sites/{name}")
    fmt = output_format(output, as_json)
    if fmt in (OutputFormat.TABLE, OutputFormat.WIDE) and site["last_seen"]:
        site["last_seen"] = f"{site['last_seen']} ({ago(site['last_seen'])})"
    show_one(site, fmt)


@app.command("decommission")
def decommission(
    ctx: typer.Context,
    name: str,
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    force: bool = typer.Option(
        False, help="Revoke at once, without waiting for the agent to stop its instances."
    ),
    wait: float = typer.Option(
        0, help="Seconds to wait until the site is decommissioned (0: do not wait)."
    ),
    as_json: bool = JsonOpt,
    output: OutputFormat | None = OutputOpt,
) -> None:
    """Drain a site, then revoke its agent's credential.

    The site turns draining: placement skips it and its instances are handed off
    to other sites where one fits (stopped where none does). When its agent
    reports them gone the credential is revoked and the site is decommissioned.
    """
    confirm(f"Decommission site {name!r}? Its instances will move or stop", yes)
    c = ctx_of(ctx).client()
    site: dict[str, Any] = c.post(f"/v1/sites/{name}/decommission?force={str(force).lower()}")
    deadline = time.monotonic() + wait
    while site["state"] == "draining" and time.monotonic() < deadline:
        time.sleep(0.5)
        site = c.get(f"/v1/sites/{name}")
    fmt = output_format(output, as_json)
    if fmt is not OutputFormat.TABLE:
        show_one(site, fmt)
    elif site["state"] == "draining":
        console.print(
            f"site [bold]{name}[/] is draining: placement skips it and its instances are "
            "moving (or stopping); it is decommissioned once its agent reports them gone "
            f"(cloudlet site show {name}; --force revokes at once)"
        )
    else:
        console.print(f"site [bold]{name}[/] is decommissioned; its credential is revoked")
    if wait > 0 and site["state"] == "draining":
        raise CloudletError(f"site {name} still draining after {wait:g}s")


@app.command("drain")
def drain(
    ctx: typer.Context,
    name: str,
    as_json: bool = JsonOpt,
    output: OutputFormat | None = OutputOpt,
) -> None:
    """Move every instance off a site by handoff (before maintenance); the site stays."""
    site: dict[str, Any] = ctx_of(ctx).client().post(f"/v1/sites/{name}/drain")
    fmt = output_format(output, as_json)
    if fmt is not OutputFormat.TABLE:
        show_one(site, fmt)
        return
    console.print(f"site [bold]{name}[/] is draining; {site['instances']} instance(s) to move")
