"""`cloudlet site ...`: register, list, show, decommission sites."""

from __future__ import annotations

from typing import Any

import typer

from cloudlet.cli._context import JsonOpt, ctx_of, parse_pairs
from cloudlet.cli._output import ago, console, emit_json, human_bytes, pct, show, show_one

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
    """Register a site and print the one-time join token for its agent."""
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
    print(token["token"])
    console.print(
        f"start its agent with:\n  cloudlet agent run --controller {c.url} --join {token['token']}"
    )


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
def list_(ctx: typer.Context, as_json: bool = JsonOpt) -> None:
    """Every site with availability, sync status and traffic."""
    show(ctx_of(ctx).client().get("/v1/sites"), SITE_COLUMNS, as_json)


@app.command("show")
def show_(ctx: typer.Context, name: str, as_json: bool = JsonOpt) -> None:
    """One site in detail."""
    site: dict[str, Any] = ctx_of(ctx).client().get(f"/v1/sites/{name}")
    if not as_json:
        site["last_seen"] = f"{site['last_seen']} ({ago(site['last_seen'])})"
    show_one(site, as_json)


@app.command("decommission")
def decommission(
    ctx: typer.Context,
    name: str,
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    as_json: bool = JsonOpt,
) -> None:
    """Drain a site's instances and revoke its agent's credential."""
    if not yes:
        typer.confirm(f"Decommission site {name!r}? Its instances will be removed", abort=True)
    show_one(ctx_of(ctx).client().post(f"/v1/sites/{name}/decommission"), as_json)


@app.command("drain")
def drain(ctx: typer.Context, name: str, as_json: bool = JsonOpt) -> None:
    """Move every instance off a site by handoff (before maintenance)."""
    site = ctx_of(ctx).client().post(f"/v1/sites/{name}/drain")
    if as_json:
        emit_json(site)
        return
    console.print(f"site [bold]{name}[/] is draining; {site['instances']} instance(s) to move")
