"""`cloudlet client ...`: what a mobile client does: discover cloudlets, connect to an app."""

from __future__ import annotations

import dataclasses

import typer

from cloudlet import client as cl
from cloudlet.cli._client import resolve_token
from cloudlet.cli._context import JsonOpt, ctx_of, parse_near
from cloudlet.cli._output import console, emit_json, show
from cloudlet.errors import AuthError

app = typer.Typer(help="Act as a client: find the best cloudlet, start or join an app.")

NearOpt = typer.Option(None, "--near", help="The client's position LAT,LON.")


def _controller(ctx: typer.Context, offline: bool) -> str | None:
    if offline:
        return None
    settings = ctx_of(ctx).settings()
    return settings.controller_url or f"http://127.0.0.1:{settings.controller.port}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


COLUMNS = [
    ("SITE", lambda c: c["site"]),
    ("FROM", lambda c: c["source"]),
    ("RANK", lambda c: c["rank"]),
    ("EST RTT ms", lambda c: _ms(c["estimated_rtt_ms"])),
    ("MEASURED ms", lambda c: _ms(c["measured_rtt_ms"])),
    ("CACHE", lambda c: c["details"].get("cache")),
    ("FIRST ANSWER s", lambda c: c["details"].get("expected_first_response_s")),
    ("LOAD", lambda c: c["details"].get("load")),
    ("ENDPOINT", lambda c: c["endpoint"]),
]


@app.command("discover")
def discover(
    ctx: typer.Context,
    app_name: str = typer.Argument(..., metavar="APP"),
    near: str | None = NearOpt,
    top: int = typer.Option(3, help="How many of the ranked sites to measure."),
    offline: bool = typer.Option(False, help="Skip the controller: browse the LAN (DNS-SD)."),
    as_json: bool = JsonOpt,
) -> None:
    """Rank the cloudlets for APP (controller, else DNS-SD) and measure the RTT to each."""
    lat, lon = parse_near(near)
    found = cl.candidates(_controller(ctx, offline), app_name, lat, lon, top=top)
    show([dataclasses.asdict(c) for c in found], COLUMNS, as_json)


@app.command("connect")
def connect(
    ctx: typer.Context,
    app_name: str = typer.Argument(..., metavar="APP"),
    near: str | None = NearOpt,
    top: int = typer.Option(3, help="How many of the ranked sites to measure."),
    offline: bool = typer.Option(False, help="Skip the controller: browse the LAN (DNS-SD)."),
    timeout: float = typer.Option(60.0, help="Longest wait for the app to run."),
    local_token: str | None = typer.Option(
        None,
        envvar="CLOUDLET_LOCAL_TOKEN",
        help="The site-local token, for sites whose local API listens beyond loopback.",
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Pick the cloudlet with the lowest measured RTT and start or join APP there."""
    lat, lon = parse_near(near)
    settings = ctx_of(ctx).settings()
    try:
        token: str | None = resolve_token(settings)
    except AuthError:
        token = None  # then only sites that hold the app's definition can start it
    conn = cl.connect(
        _controller(ctx, offline),
        app_name,
        lat,
        lon,
        top=top,
        timeout=timeout,
        token=token,
        local_token=local_token,
    )
    if as_json:
        emit_json(dataclasses.asdict(conn))
        return
    verb = "joined" if conn.joined else "started"
    console.print(
        f"{verb} [bold]{app_name}[/] at site [bold]{conn.site}[/] "
        f"({_ms(conn.measured_rtt_ms)} ms): {conn.endpoint}"
    )
