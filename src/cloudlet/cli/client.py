"""`cloudlet client ...`: what a mobile client does: discover cloudlets, connect to an app."""

from __future__ import annotations

import dataclasses
import re
import ssl

import typer

from cloudlet import client as cl
from cloudlet.cli._client import resolve_token
from cloudlet.cli._config import ClientConfig
from cloudlet.cli._context import JsonOpt, ctx_of, parse_near
from cloudlet.cli._output import console, emit_json, show
from cloudlet.errors import AuthError, InvalidInputError

app = typer.Typer(help="Act as a client: find the best cloudlet, start or join an app.")
tokens = typer.Typer(help="Client tokens: what an app's end users show a site to start it.")
app.add_typer(tokens, name="token")

NearOpt = typer.Option(None, "--near", help="The client's position LAT,LON.")


def _controller(ctx: typer.Context, offline: bool) -> str | None:
    if offline:
        return None
    settings = ctx_of(ctx).settings()
    return settings.controller_url or f"http://127.0.0.1:{settings.controller.port}"


def _verify(ctx: typer.Context) -> ssl.SSLContext | bool:
    """What the controller and sites are verified with: CLOUDLET_CA_FILE, else the system."""
    ca_file = ctx_of(ctx).settings().ca_file
    return ssl.create_default_context(cafile=ca_file) if ca_file is not None else True


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
    found = cl.candidates(
        _controller(ctx, offline), app_name, lat, lon, top=top, verify=_verify(ctx)
    )
    show([dataclasses.asdict(c) for c in found], COLUMNS, as_json)


@app.command("connect")
def connect(
    ctx: typer.Context,
    app_name: str = typer.Argument(..., metavar="APP"),
    near: str | None = NearOpt,
    top: int = typer.Option(3, help="How many of the ranked sites to measure."),
    offline: bool = typer.Option(False, help="Skip the controller: browse the LAN (DNS-SD)."),
    timeout: float = typer.Option(60.0, help="Longest wait for the app to run."),
    client_token: str | None = typer.Option(
        None,
        "--client-token",
        envvar="CLOUDLET_CLIENT_TOKEN",
        help="A client token naming APP (cloudlet client token create): sites check it "
        "offline too before they start the app, and meter the instance to its project.",
    ),
    local_token: str | None = typer.Option(
        None,
        envvar="CLOUDLET_LOCAL_TOKEN",
        help="The site-local token (the site operator's), instead of a client token.",
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Pick the cloudlet with the lowest measured RTT and start or join APP there."""
    lat, lon = parse_near(near)
    s = ctx_of(ctx).settings()
    config = ClientConfig(s.controller_url, s.token, s.controller.port, s.controller.data_dir)
    try:
        token: str | None = resolve_token(config)
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
        local_token=client_token or local_token,
        verify=_verify(ctx),
    )
    if as_json:
        emit_json(dataclasses.asdict(conn))
        return
    verb = "joined" if conn.joined else "started"
    console.print(
        f"{verb} [bold]{app_name}[/] at site [bold]{conn.site}[/] "
        f"({_ms(conn.measured_rtt_ms)} ms): {conn.endpoint}"
    )


_DURATION = re.compile(r"^(\d+)([smhd]?)$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(value: str) -> int:
    """Seconds in ``90``, ``90s``, ``10m``, ``8h`` or ``7d``."""
    m = _DURATION.match(value.strip())
    if m is None:
        raise InvalidInputError(f"--ttl must be a duration like 600, 10m, 8h or 7d, not {value!r}")
    return int(m[1]) * _UNIT[m[2]]


@tokens.command("create")
def create_token(
    ctx: typer.Context,
    project: str = typer.Option(..., "--project", help="The project the client is metered to."),
    apps: list[str] = typer.Option(..., "--app", help="An app it may start (repeat for more)."),
    ttl: str = typer.Option("8h", "--ttl", help="Lifetime: 600, 10m, 8h, 7d (at most 30d)."),
    subject: str | None = typer.Option(None, help="Who carries it (a device, a person)."),
    as_json: bool = JsonOpt,
) -> None:
    """Sign a client token for apps of a project; print it (it is not stored)."""
    body = {"project": project, "apps": apps, "ttl_s": parse_ttl(ttl)}
    if subject is not None:
        body["subject"] = subject
    created = ctx_of(ctx).client().post("/v1/client-tokens", body)
    if as_json:
        emit_json(created)
    else:
        print(created["token"])


TOKEN_COLUMNS = [
    ("JTI", lambda t: t["jti"]),
    ("SUBJECT", lambda t: t["subject"]),
    ("PROJECT", lambda t: t["project"]),
    ("APPS", lambda t: ",".join(t["apps"])),
    ("EXPIRES", lambda t: t["expires_at"]),
    ("REVOKED", lambda t: t["revoked_at"] or "-"),
]


@tokens.command("list")
def list_tokens(
    ctx: typer.Context,
    project: str | None = typer.Option(None, help="Only this project's (admins)."),
    include_expired: bool = typer.Option(False, "--all", help="Also the expired ones."),
    as_json: bool = JsonOpt,
) -> None:
    """The client tokens minted for your project (what each says; never the token)."""
    params: dict[str, object] = {"include_expired": include_expired}
    if project is not None:
        params["project"] = project
    show(ctx_of(ctx).client().get("/v1/client-tokens", **params), TOKEN_COLUMNS, as_json)


@tokens.command("revoke")
def revoke_token(
    ctx: typer.Context,
    jti: str = typer.Argument(..., help="The token's id (cloudlet client token list)."),
) -> None:
    """Revoke a client token before it expires: sites refuse it from their next pull."""
    got = ctx_of(ctx).client().post("/v1/client-tokens/revocations", {"jti": jti})
    console.print(f"revoked {got['jti']} ({got['subject']}, project {got['project']})")


keys = typer.Typer(help="The keys client tokens are signed with.")
app.add_typer(keys, name="key")


@keys.command("list")
def list_keys(ctx: typer.Context, as_json: bool = JsonOpt) -> None:
    """The public keys sites check client tokens with (not retired)."""
    got = ctx_of(ctx).client().get("/v1/client-tokens/keys")["keys"]
    show(got, [("KID", lambda k: k["kid"]), ("CURVE", lambda k: k["crv"])], as_json)


@keys.command("retire")
def retire_key(ctx: typer.Context, kid: str = typer.Argument(..., help="The key's id.")) -> None:
    """Retire a key (admins): sites drop it, and the tokens it signed stop working."""
    ctx_of(ctx).client().delete(f"/v1/client-tokens/keys/{kid}")
    console.print(f"retired {kid}")
