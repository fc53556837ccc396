"""`cloudlet app ...`: publish and manage apps."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import typer
import yaml

from cloudlet.cli import _rollout
from cloudlet.cli._context import (
    JsonOpt,
    OutputFormat,
    OutputOpt,
    ctx_of,
    output_format,
    parse_pairs,
)
from cloudlet.cli._output import console, show, show_one
from cloudlet.errors import InvalidInputError

app = typer.Typer(help="Applications in the catalog.", no_args_is_help=True)

APP_COLUMNS = [
    ("NAME", lambda a: a["name"]),
    ("PROJECT", lambda a: a["project"]),
    ("COMPONENTS", lambda a: ", ".join(f"{c['name']}({c['kind']})" for c in a["components"])),
    ("VCPUS", lambda a: a["resources"]["vcpus"]),
    ("MEMORY", lambda a: f"{a['resources']['memory_mib']} MiB"),
    ("LATENCY", lambda a: f"{a['latency_bound_ms']} ms" if a["latency_bound_ms"] else "-"),
]


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise InvalidInputError(f"cannot read app file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidInputError(f"app file {path} must hold a mapping")
    return data


def _components(
    ctx: typer.Context,
    command: str | None,
    env: list[str] | None,
    vm_overlay: str | None,
    vm_image: str | None,
    guest_port: int | None,
) -> list[dict[str, Any]] | None:
    """The one component the flags describe, or None if they describe none."""
    if command is not None and (vm_overlay or vm_image):
        raise InvalidInputError("give --command (a process) or --vm-overlay/--vm-image, not both")
    if vm_overlay or vm_image:
        client = ctx_of(ctx).client()
        overlay = client.get(f"/v1/overlays/{vm_overlay}") if vm_overlay else None
        image = client.get(f"/v1/images/{vm_image}")["digest"] if vm_image else None
        if overlay is not None and image is not None and image != overlay["base"]:
            raise InvalidInputError(f"overlay {vm_overlay!r} is not made on image {vm_image!r}")
        return [
            {
                "name": "main",
                "kind": "vm",
                "image": image or (overlay or {}).get("base"),
                "overlay": overlay["id"] if overlay else None,
                "guest_port": guest_port,
                "env": parse_pairs(env, "env"),
            }
        ]
    if command is not None:
        return [
            {
                "name": "main",
                "kind": "process",
                "command": shlex.split(command),
                "env": parse_pairs(env, "env"),
            }
        ]
    return None


@app.command("create")
def create(
    ctx: typer.Context,
    name: str | None = typer.Argument(None, help="App name (or give it in --file)."),
    file: Path | None = typer.Option(None, "--file", "-f", help="YAML or JSON app definition."),
    command: str | None = typer.Option(None, help="Command to run ($PORT holds its port)."),
    vcpus: float | None = typer.Option(None, help="Virtual CPUs."),
    memory: int | None = typer.Option(None, "--memory", help="Memory in MiB."),
    disk: float | None = typer.Option(None, "--disk", help="Disk in GiB."),
    latency_ms: int | None = typer.Option(None, "--latency-ms", help="Latency bound in ms."),
    label: list[str] | None = typer.Option(None, "--label", "-l", help="key=value."),
    constraint: list[str] | None = typer.Option(None, "--constraint", "-c", help="e.g. region==eu"),
    env: list[str] | None = typer.Option(
        None, "--env", "-e", help="KEY=value for the process (or CLOUDLET_VM_* for the VM)."
    ),
    vm_overlay: str | None = typer.Option(
        None, "--vm-overlay", help="A VM app: its overlay (name or id); the base is its base."
    ),
    vm_image: str | None = typer.Option(
        None, "--vm-image", help="A VM app: its base image (name or digest), if no overlay."
    ),
    guest_port: int | None = typer.Option(None, "--guest-port", help="The VM's service port."),
    as_json: bool = JsonOpt,
) -> None:
    """Publish an app from flags, or from a file (flags override the file)."""
    body: dict[str, Any] = _read_file(file) if file else {}
    if name:
        body["name"] = name
    components = _components(ctx, command, env, vm_overlay, vm_image, guest_port)
    if components is not None:
        body["components"] = components
    resources = body.setdefault("resources", {})
    for key, value in (("vcpus", vcpus), ("memory_mib", memory), ("disk_gib", disk)):
        if value is not None:
            resources[key] = value
    if latency_ms is not None:
        body["latency_bound_ms"] = latency_ms
    if label:
        body["labels"] = {**body.get("labels", {}), **parse_pairs(label)}
    if constraint:
        body["constraints"] = [*body.get("constraints", []), *constraint]
    if "name" not in body:
        raise InvalidInputError("an app needs a name: give it as an argument or in --file")
    if "components" not in body:
        raise InvalidInputError(
            "an app needs --command, --vm-overlay/--vm-image, or components in --file"
        )
    created = ctx_of(ctx).client().post("/v1/apps", body)
    if as_json:
        show_one(created, True)
    else:
        console.print(f"app [bold]{created['name']}[/] created in project {created['project']}")


@app.command("list")
def list_(
    ctx: typer.Context, as_json: bool = JsonOpt, output: OutputFormat | None = OutputOpt
) -> None:
    """Every app."""
    show(ctx_of(ctx).client().get("/v1/apps"), APP_COLUMNS, output_format(output, as_json))


@app.command("show")
def show_(
    ctx: typer.Context,
    name: str,
    as_json: bool = JsonOpt,
    output: OutputFormat | None = OutputOpt,
) -> None:
    """One app in detail."""
    show_one(ctx_of(ctx).client().get(f"/v1/apps/{name}"), output_format(output, as_json))


@app.command("delete")
def delete(ctx: typer.Context, name: str) -> None:
    """Delete an app that has no live instances."""
    ctx_of(ctx).client().delete(f"/v1/apps/{name}")
    console.print(f"app [bold]{name}[/] deleted")


@app.command("publish")
def publish(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="The app to publish a new version of."),
    file: Path | None = typer.Option(
        None, "--file", "-f", help="YAML or JSON holding the new components (and resources)."
    ),
    command: str | None = typer.Option(None, help="The new command ($PORT holds its port)."),
    env: list[str] | None = typer.Option(None, "--env", "-e", help="KEY=value for the process."),
    vm_overlay: str | None = typer.Option(None, "--vm-overlay", help="The new overlay."),
    vm_image: str | None = typer.Option(None, "--vm-image", help="The new base image."),
    guest_port: int | None = typer.Option(None, "--guest-port", help="The VM's service port."),
    strategy: str = _rollout.STRATEGY,
    max_parallel: int = _rollout.MAX_PARALLEL,
    canary: int = _rollout.CANARY,
    health_timeout: float | None = _rollout.HEALTH_TIMEOUT,
    wait: bool = _rollout.WAIT,
    output: OutputFormat | None = OutputOpt,
) -> None:
    """Publish the app's next version and roll its instances to it in waves.

    Each wave must serve at the new version before the next starts; an unhealthy
    wave is rolled back and the rollout stops."""
    definition = _read_file(file) if file else {}
    body: dict[str, Any] = {
        k: definition[k] for k in ("components", "resources") if k in definition
    }
    components = _components(ctx, command, env, vm_overlay, vm_image, guest_port)
    if components is not None:
        body["components"] = components
    if "components" not in body:
        raise InvalidInputError("give the new version: --command, --vm-overlay or --file")
    body["rollout"] = _rollout.options(strategy, max_parallel, canary, health_timeout)
    client = ctx_of(ctx).client()
    rollout = client.post(f"/v1/apps/{name}/versions", body)
    fmt = output_format(output, False)
    if fmt is OutputFormat.TABLE:
        console.print(f"app [bold]{name}[/] version {rollout['to_version']} published")
    _rollout.finish(client, rollout, wait, fmt)
