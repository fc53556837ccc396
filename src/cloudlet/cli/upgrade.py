"""`cloudlet upgrade ...`: agent packages, agent upgrades across sites, rollout status."""

from __future__ import annotations

from pathlib import Path

import typer

from cloudlet.cli import _rollout
from cloudlet.cli._context import JsonOpt, OutputFormat, OutputOpt, ctx_of, output_format
from cloudlet.cli._output import console, human_bytes, show, show_one
from cloudlet.errors import InvalidInputError

app = typer.Typer(
    help="Upgrade the sites' agents in waves; follow app rollouts.", no_args_is_help=True
)

PACKAGE_COLUMNS = [
    ("VERSION", lambda p: p["version"]),
    ("FILE", lambda p: p["filename"]),
    ("SIZE", lambda p: human_bytes(p["size"])),
    ("DIGEST", lambda p: p["digest"][:16]),
]


@app.command("upload")
def upload(ctx: typer.Context, wheel: Path, as_json: bool = JsonOpt) -> None:
    """Add a wheel of the agent (`pip wheel --no-deps .`) for sites to upgrade to."""
    if not wheel.is_file():
        raise InvalidInputError(f"{wheel} is not a file")
    client = ctx_of(ctx).client()
    with wheel.open("rb") as f:
        added = client.request(
            "POST", "/v1/agent-packages", params={"filename": wheel.name}, content=f.read()
        )
    if as_json:
        show_one(added, True)
    else:
        console.print(
            f"agent package [bold]{added['version']}[/] added ({human_bytes(added['size'])})"
        )


@app.command("packages")
def packages(
    ctx: typer.Context, as_json: bool = JsonOpt, output: OutputFormat | None = OutputOpt
) -> None:
    """The agent packages the controller holds."""
    rows = ctx_of(ctx).client().get("/v1/agent-packages")
    show(rows, PACKAGE_COLUMNS, output_format(output, as_json))


@app.command("agents")
def agents(
    ctx: typer.Context,
    to: str = typer.Option(..., "--to", help="The version to run (an uploaded package)."),
    site: list[str] | None = typer.Option(None, "--site", "-s", help="Only these sites."),
    strategy: str = _rollout.STRATEGY,
    max_parallel: int = _rollout.MAX_PARALLEL,
    canary: int = _rollout.CANARY,
    health_timeout: float | None = _rollout.HEALTH_TIMEOUT,
    wait: bool = _rollout.WAIT,
    output: OutputFormat | None = OutputOpt,
) -> None:
    """Upgrade the agents of every active site (or --site ...) in waves.

    A site that does not come back healthy at the new version rolls back by itself;
    the rollout then stops and moves that wave back."""
    body = {
        "to": to,
        "sites": site or None,
        "rollout": _rollout.options(strategy, max_parallel, canary, health_timeout),
    }
    client = ctx_of(ctx).client()
    rollout = client.post("/v1/upgrades/agents", body)
    _rollout.finish(client, rollout, wait, output_format(output, False))


@app.command("status")
def status(
    ctx: typer.Context,
    rollout: str | None = typer.Argument(None, help="A rollout's id (or its first 8 characters)."),
    app_name: str | None = typer.Option(None, "--app", help="Only this app's rollouts."),
    as_json: bool = JsonOpt,
    output: OutputFormat | None = OutputOpt,
) -> None:
    """The latest rollouts (agent upgrades and app rollouts), or one in detail."""
    client = ctx_of(ctx).client()
    fmt = output_format(output, as_json)
    params = {"app": app_name} if app_name else {}
    rows = client.get("/v1/rollouts", **params)
    if rollout is None:
        show(rows, _rollout.ROLLOUT_COLUMNS, fmt)
        return
    matches = [r["id"] for r in rows if r["id"].startswith(rollout)] or [rollout]
    if len(matches) > 1:
        raise InvalidInputError(f"{rollout!r} names {len(matches)} rollouts; give more of its id")
    _rollout.report(client.get(f"/v1/rollouts/{matches[0]}"), fmt)
