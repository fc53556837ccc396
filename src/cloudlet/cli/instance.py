"""`cloudlet instance ...`: run apps at sites."""

from __future__ import annotations

import time
from typing import Any

import typer

from cloudlet.cli._context import (
    JsonOpt,
    OutputFormat,
    OutputOpt,
    ctx_of,
    output_format,
    parse_near,
)
from cloudlet.cli._explain import print_handoff, print_placement
from cloudlet.cli._output import ago, console, emit_json, human_bytes, show, show_one
from cloudlet.cli._paging import AllOpt, collect, more_note
from cloudlet.errors import CloudletError

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
WIDE_COLUMNS = [
    ("ID", lambda i: i["id"]),
    ("PROJECT", lambda i: i["project"]),
    ("RESTARTS", lambda i: i.get("restarts", 0)),
    ("REASON", lambda i: i["reason"]),
]
#: The actual state each action ends in, for --wait.
_TARGET = {
    "stop": "stopped",
    "start": "running",
    "suspend": "suspended",
    "resume": "running",
    "restart": "running",
}


@app.command("create")
def create(
    ctx: typer.Context,
    app_name: str = typer.Argument(..., metavar="APP"),
    site: str | None = typer.Option(None, help="Site to run at (default: placement picks)."),
    name: str | None = typer.Option(None, help="Instance name (default: APP-xxxxxx)."),
    near: str | None = typer.Option(None, help="Client location LAT,LON for placement."),
    wait: float = typer.Option(0, help="Seconds to wait until it runs (0: do not wait)."),
    as_json: bool = JsonOpt,
    output: OutputFormat | None = OutputOpt,
) -> None:
    """Start an instance of an app; say where placement put it and why."""
    c = ctx_of(ctx).client()
    lat, lon = parse_near(near)
    body = {"app": app_name, "site": site, "name": name}
    if lat is not None:
        body |= {"client_latitude": lat, "client_longitude": lon}
    created: dict[str, Any] = c.post("/v1/instances", body)
    placement = created.get("placement")
    if wait > 0:
        created = _wait_state(c, created["id"], "running", wait) | {"placement": placement}
    fmt = output_format(output, as_json)
    if fmt is not OutputFormat.TABLE:
        show_one(created, fmt)
        return
    console.print(
        f"instance [bold]{created['name']}[/] at site [bold]{created['site']}[/]: "
        f"{created['actual_state']}" + (f" at {created['endpoint']}" if created["endpoint"] else "")
    )
    print(explain(placement, created["site"]))


def explain(placement: dict[str, Any] | None, site: str, top: int = 3) -> str:
    """One line on why placement chose ``site``: the best scores, and how many sites
    each filter rejected (--json has every weigher's share)."""
    if placement is None:
        return f"placement: site {site} was named (--site)"
    ranked = placement["ranked"]
    scores = ", ".join(f"{r['name']} {r['score']:.3f}" for r in ranked[:top])
    more = f" (+{len(ranked) - top} more)" if len(ranked) > top else ""
    line = f"placement: chose {site} of {len(ranked)} fitting site(s); scores {scores}{more}"
    rejected: dict[str, int] = {}
    for r in placement["rejected"]:
        rejected[r["filter"]] = rejected.get(r["filter"], 0) + 1
    if rejected:
        counts = ", ".join(f"{n} by {f}" for f, n in sorted(rejected.items()))
        line += f"; rejected {len(placement['rejected'])}: {counts}"
    return line


def _wait_state(
    c: Any, ref: str, target: str, timeout: float, after: str | None = None
) -> dict[str, Any]:
    """Poll until the instance is ``target``; with ``after`` (an ISO time), until the
    site reported reaching ``target`` after it (a restart passes through other states)."""
    deadline = time.monotonic() + timeout
    while True:
        item: dict[str, Any] = c.get(f"/v1/instances/{ref}")
        if item["actual_state"] == target and (after is None or _reached(c, item, target, after)):
            return item
        if item["actual_state"] == "failed":
            raise CloudletError(f"instance {item['name']} failed: {item['reason']}")
        if time.monotonic() > deadline:
            raise CloudletError(
                f"instance {item['name']} still {item['actual_state']} after {timeout:g}s"
            )
        time.sleep(0.25)


def _reached(c: Any, item: dict[str, Any], target: str, after: str) -> bool:
    events = c.get(
        "/v1/events", instance=item["id"], kind="instance.state", since=after, limit=1000
    )
    return any(e["data"].get("state") == target for e in events)


@app.command("list")
def list_(
    ctx: typer.Context,
    site: str | None = typer.Option(None, help="Only this site's instances."),
    limit: int | None = typer.Option(
        None, min=1, help="At most this many, oldest first (default: the API's first page, 1000)."
    ),
    every: bool = AllOpt,
    as_json: bool = JsonOpt,
    output: OutputFormat | None = OutputOpt,
) -> None:
    """Instances, oldest first, with their desired and actual state."""
    rows, more = collect(ctx_of(ctx).client(), "/v1/instances", limit, every, site=site)
    show(rows, INSTANCE_COLUMNS, output_format(output, as_json), wide=WIDE_COLUMNS)
    if more:
        more_note("instances", len(rows), "cloudlet instance list")


@app.command("show")
def show_(
    ctx: typer.Context,
    ref: str = typer.Argument(..., metavar="NAME|ID"),
    as_json: bool = JsonOpt,
    output: OutputFormat | None = OutputOpt,
) -> None:
    """One instance in detail: its open usage interval, and why it is at its site.

    The site records usage every 60 s (usage_interval_s) and when the instance
    stops; usage_since is where the interval not recorded yet began.
    """
    client = ctx_of(ctx).client()
    item: dict[str, Any] = client.get(f"/v1/instances/{ref}")
    fmt = output_format(output, as_json)
    if fmt in (OutputFormat.TABLE, OutputFormat.WIDE):
        since = item.get("usage_since")
        item["usage_since"] = (
            f"{since} (open for {ago(since).removesuffix(' ago')}; recorded every 60 s "
            "and when it stops)"
            if since
            else "- (not running: no usage accrues)"
        )
        kept = client.get(f"/v1/instances/{item['id']}/checkpoints")
        item["last_checkpoint"] = _checkpoint_line(kept[0]) if kept else "-"
        show_one({k: v for k, v in item.items() if k != "placement"}, fmt)
        print_placement(item.get("placement"))
    else:
        show_one(item, fmt)


def _checkpoint_line(c: dict[str, Any]) -> str:
    pause = f", paused {c['pause_s']:.3f} s" if c.get("pause_s") is not None else ""
    return (
        f"{c['id']} from {c['site']} at epoch {c['epoch']}, {ago(c['taken_at'])} "
        f"({c['kind']}, {human_bytes(c['size'])}{pause})"
    )


def _action(name: str, doc: str) -> None:
    def command(
        ctx: typer.Context,
        ref: str = typer.Argument(..., metavar="NAME|ID"),
        wait: float = typer.Option(
            0, help=f"Seconds to wait until it is {_TARGET[name]} (0: do not wait)."
        ),
        as_json: bool = JsonOpt,
        output: OutputFormat | None = OutputOpt,
    ) -> None:
        c = ctx_of(ctx).client()
        item: dict[str, Any] = c.post(f"/v1/instances/{ref}/{name}")
        if wait > 0:
            after = item["updated_at"] if name == "restart" else None
            item = _wait_state(c, item["id"], _TARGET[name], wait, after)
        fmt = output_format(output, as_json)
        if fmt is not OutputFormat.TABLE:
            show_one(item, fmt)
        elif wait > 0:
            console.print(f"instance [bold]{item['name']}[/] is {item['actual_state']}")
        else:
            console.print(
                f"instance [bold]{item['name']}[/]: {name} asked of site {item['site']} "
                f"(now {item['actual_state']}; --wait to wait for {_TARGET[name]})"
            )

    command.__doc__ = doc
    app.command(name)(command)


_action("stop", "Stop an instance; it keeps its site and definition (no usage while stopped).")
_action("start", "Start a stopped or suspended instance again.")
_action(
    "suspend",
    "Suspend a VM instance: its RAM and device state stay at the site, resume is fast "
    "(no usage while suspended). Process instances refuse it.",
)
_action("resume", "Resume a suspended instance where it left off.")
_action("restart", "Restart an instance's workloads (a reboot for VMs).")


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
        item = _wait_state(c, ref, "running", wait)
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
    lat, lon = parse_near(at)
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
