"""`cloudlet instance ...`: run apps at sites."""

from __future__ import annotations

import time
from typing import Any

import typer

from cloudlet.cli._context import JsonOpt, ctx_of
from cloudlet.cli._explain import print_handoff, print_placement
from cloudlet.cli._output import ago, console, emit_json, show, show_one
from cloudlet.errors import CloudletError, InvalidInputError

app = typer.Typer(help="App instances running at sites.", no_args_is_help=True)

INSTANCE_COLUMNS = [
    ("NAME", lambda i: i["name"]),
    ("APP", lambda i: i["app"]),
    ("SITE", lambda i: i["site"]),
    ("DESIRED", lambda i: i["desired_state"]),
    ("ACTUAL", lambda i: i["actual_state"]),
    ("ENDPOINT", lambda i: i["endpoint"]),
    ("ORIGIN", lambda i: i["origin"]),
    ("UPDATED", lambda i: ago(i["updated_at"])),
]


def _near(value: str | None) -> tuple[float | None, float | None]:
    if value is None:
        return None, None
    try:
        lat, lon = (float(p) for p in value.split(","))
    except ValueError as exc:
        raise InvalidInputError(f"--near must be LAT,LON, got {value!r}") from exc
    return lat, lon


@app.command("create")
def create(
    ctx: typer.Context,
    app_name: str = typer.Argument(..., metavar="APP"),
    site: str | None = typer.Option(None, help="Site to run at (default: placement picks)."),
    name: str | None = typer.Option(None, help="Instance name (default: APP-xxxxxx)."),
    near: str | None = typer.Option(None, help="Client location LAT,LON for placement."),
    wait: float = typer.Option(0, help="Seconds to wait until it runs (0: do not wait)."),
    as_json: bool = JsonOpt,
) -> None:
    """Start an instance of an app."""
    c = ctx_of(ctx).client()
    lat, lon = _near(near)
    body = {"app": app_name, "site": site, "name": name}
    if lat is not None:
        body |= {"client_latitude": lat, "client_longitude": lon}
    created: dict[str, Any] = c.post("/v1/instances", body)
    if wait > 0:
        created = _wait_running(c, created["id"], wait)
    if as_json:
        show_one(created, True)
        return
    console.print(
        f"instance [bold]{created['name']}[/] at site [bold]{created['site']}[/]: "
        f"{created['actual_state']}" + (f" at {created['endpoint']}" if created["endpoint"] else "")
    )


def _wait_running(c: Any, ref: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        item: dict[str, Any] = c.get(f"/v1/instances/{ref}")
        if item["actual_state"] == "running":
            return item
        if item["actual_state"] == "failed":
            raise CloudletError(f"instance {item['name']} failed: {item['reason']}")
        if time.monotonic() > deadline:
            raise CloudletError(
                f"instance {item['name']} still {item['actual_state']} after {timeout:g}s"
            )
        time.sleep(0.5)


@app.command("list")
def list_(
    ctx: typer.Context,
    site: str | None = typer.Option(None, help="Only this site's instances."),
    as_json: bool = JsonOpt,
) -> None:
    """Every instance with its desired and actual state."""
    show(ctx_of(ctx).client().get("/v1/instances", site=site), INSTANCE_COLUMNS, as_json)


@app.command("show")
def show_(
    ctx: typer.Context, ref: str = typer.Argument(..., metavar="NAME|ID"), as_json: bool = JsonOpt
) -> None:
    """One instance in detail, with why it is at its site."""
    item = ctx_of(ctx).client().get(f"/v1/instances/{ref}")
    show_one({k: v for k, v in item.items() if as_json or k != "placement"}, as_json)
    if not as_json:
        print_placement(item.get("placement"))


@app.command("delete")
def delete(ctx: typer.Context, ref: str = typer.Argument(..., metavar="NAME|ID")) -> None:
    """Stop and remove an instance."""
    item = ctx_of(ctx).client().delete(f"/v1/instances/{ref}")
    console.print(f"instance [bold]{item['name']}[/] is being deleted")


@app.command("move")
def move(
    ctx: typer.Context,
    ref: str = typer.Argument(..., metavar="NAME|ID"),
    to: str = typer.Option(..., "--to", help="The destination site."),
    wait: float = typer.Option(0, help="Seconds to wait until it runs there (0: do not wait)."),
    as_json: bool = JsonOpt,
) -> None:
    """Hand an instance over to another site (its state comes along)."""
    c = ctx_of(ctx).client()
    handoff: dict[str, Any] = c.post(f"/v1/instances/{ref}/move", {"to": to})
    if wait > 0:
        item = _wait_running(c, ref, wait)
        if item["site"] != to:
            raise CloudletError(f"instance {item['name']} still at {item['site']}")
        (handoff,) = [h for h in c.get("/v1/handoffs", instance=ref) if h["id"] == handoff["id"]]
    if as_json:
        show_one(handoff, True)
        return
    print_handoff(handoff)


@app.command("client")
def client_position(
    ctx: typer.Context,
    ref: str = typer.Argument(..., metavar="NAME|ID"),
    at: str = typer.Option(..., "--at", help="The client's position now, LAT,LON."),
) -> None:
    """Record where an instance's client is now (a following instance moves with it)."""
    lat, lon = _near(at)
    body = {"latitude": lat, "longitude": lon}
    item = ctx_of(ctx).client().request("PUT", f"/v1/instances/{ref}/client", json=body)
    console.print(f"instance [bold]{item['name']}[/]: client at {lat},{lon}")


@app.command("handoffs")
def handoffs(
    ctx: typer.Context,
    ref: str | None = typer.Argument(None, metavar="[NAME|ID]"),
    as_json: bool = JsonOpt,
) -> None:
    """Moves so far, each with its phases and bytes."""
    rows = ctx_of(ctx).client().get("/v1/handoffs", instance=ref)
    if as_json:
        emit_json(rows)
        return
    for h in rows:
        print_handoff(h)
