"""Rollouts in the CLI: the options every rollout takes, and following one to its end."""

from __future__ import annotations

import time
from typing import Any

import typer

from cloudlet.cli._client import Client
from cloudlet.cli._output import OutputFormat, console, show, show_one

STRATEGY = typer.Option("serial", "--strategy", help="serial (one at a time) or parallel.")
MAX_PARALLEL = typer.Option(1, "--max-parallel", min=1, help="Items per wave when parallel.")
CANARY = typer.Option(0, "--canary", min=0, help="A first wave of this many, alone.")
HEALTH_TIMEOUT = typer.Option(
    None, "--health-timeout", min=0.1, help="Seconds an item may take to be healthy."
)
WAIT = typer.Option(False, "--wait", help="Follow the rollout until it ends (exit 1 if it fails).")

ROLLOUT_COLUMNS = [
    ("ID", lambda r: r["id"][:8]),
    ("KIND", lambda r: r["kind"]),
    ("APP", lambda r: r.get("app") or "-"),
    ("TO", lambda r: r["to_version"]),
    ("STRATEGY", lambda r: _strategy(r)),
    ("STATE", lambda r: r["state"]),
    ("WAVE", lambda r: f"{min(r['wave'] + 1, r['waves'])}/{r['waves']}"),
    ("REASON", lambda r: r.get("reason") or ""),
]
ITEM_COLUMNS = [
    ("WAVE", lambda i: i["wave"] + 1 if i["wave"] >= 0 else "-"),
    ("SITE", lambda i: i["site"]),
    ("ENTITY", lambda i: i["entity"]),
    ("FROM", lambda i: i.get("from_version") or "-"),
    ("STATE", lambda i: i["state"]),
    ("REASON", lambda i: i.get("reason") or ""),
]


def _strategy(r: dict[str, Any]) -> str:
    text = r["strategy"] if r["strategy"] == "serial" else f"parallel x{r['max_parallel']}"
    return f"{text}, canary {r['canary']}" if r["canary"] else text


def options(
    strategy: str, max_parallel: int, canary: int, health_timeout: float | None
) -> dict[str, Any]:
    body: dict[str, Any] = {"strategy": strategy, "max_parallel": max_parallel, "canary": canary}
    if health_timeout is not None:
        body["health_timeout_s"] = health_timeout
    return body


def report(rollout: dict[str, Any], fmt: OutputFormat) -> None:
    """A rollout and its items."""
    if fmt is not OutputFormat.TABLE:
        show_one(rollout, fmt)
        return
    show([rollout], ROLLOUT_COLUMNS, fmt)
    if rollout.get("items"):
        print()
        show(rollout["items"], ITEM_COLUMNS, fmt)


def follow(client: Client, rollout: dict[str, Any], interval: float = 1.0) -> dict[str, Any]:
    """Poll until the rollout ends, printing each item as it changes state."""
    seen: dict[str, str] = {}
    while True:
        for item in rollout["items"]:
            key = f"{item['site']}/{item['entity']}"
            if seen.get(key) != item["state"]:
                seen[key] = item["state"]
                why = f": {item['reason']}" if item.get("reason") else ""
                console.print(f"  wave {item['wave'] + 1}  {key}  {item['state']}{why}")
        if rollout["state"] != "running":
            return rollout
        time.sleep(interval)
        rollout = client.get(f"/v1/rollouts/{rollout['id']}")


def finish(client: Client, rollout: dict[str, Any], wait: bool, fmt: OutputFormat) -> None:
    """Report a rollout just started: follow it with ``wait`` (exit 1 if it fails)."""
    if not wait:
        if fmt is OutputFormat.TABLE:
            console.print(
                f"rollout [bold]{rollout['id']}[/] started: {len(rollout['items'])} item(s)"
            )
            console.print(f"follow it with: cloudlet upgrade status {rollout['id']}")
        else:
            show_one(rollout, fmt)
        return
    done = follow(client, rollout)
    console.print(
        f"rollout {done['id']} {done['state']}" + (f": {done['reason']}" if done["reason"] else "")
    )
    if done["state"] != "succeeded":
        raise typer.Exit(1)
