"""`cloudlet image ...`: base images (index for overlay dedup; upload, list, pre-stage)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer

from cloudlet.cli._client import Client
from cloudlet.cli._context import JsonOpt, OutputFormat, OutputOpt, ctx_of, output_format
from cloudlet.cli._output import (
    ago,
    emit_json,
    err_console,
    human_bytes,
    pct,
    progress_bars,
    show,
    show_one,
)
from cloudlet.cli._upload import DEFAULT_CHUNK, as_bar, file_digest, upload_file

app = typer.Typer(help="Base images.", no_args_is_help=True)


@app.command("index")
def index(
    base: Path = typer.Argument(..., help="Base image (raw or qcow2)."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
) -> None:
    """Hash a base image and cache its chunk index beside it (used by overlay create)."""
    from cloudlet.synthesis import build_index
    from cloudlet.synthesis.index import index_path

    with progress_bars(quiet) as progress:
        size = base.stat().st_size if base.is_file() else 0
        idx = build_index(base, (lambda n: progress("index", n, size)) if progress else None)
    data = {
        "image": str(base),
        "index": str(index_path(base)),
        "size": idx.size,
        "digest": idx.digest.hex(),
        "nonzero_chunks": len(idx.fps),
    }
    if as_json:
        emit_json(data)
    else:
        err_console.print(f"{base}: blake3 {data['digest']}", highlight=False)
        print(data["digest"])


IMAGE_COLUMNS = [
    ("NAME", lambda i: i["name"]),
    ("DIGEST", lambda i: i["digest"][:16]),
    ("SIZE", lambda i: human_bytes(i["size"])),
    ("PROJECT", lambda i: i["project"]),
    ("CREATED", lambda i: ago(i["created_at"])),
]


@app.command("upload")
def upload(
    ctx: typer.Context,
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="Base image file."),
    name: str = typer.Option(..., "--name", "-n", help="Image name in the catalog."),
    project: str | None = typer.Option(None, "--project", help="Project (default: yours)."),
    chunk_mib: int = typer.Option(
        DEFAULT_CHUNK >> 20, "--chunk-size", min=1, max=1024, help="MiB per request."
    ),
    as_json: bool = JsonOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
) -> None:
    """Upload a base image in resumable chunks: re-run the same command to resume."""
    client = ctx_of(ctx).client()
    with progress_bars(quiet) as progress:
        digest = file_digest(file, as_bar(progress, "hash"))
        image, resumed = upload_file(
            client,
            file,
            "image",
            name,
            digest=digest,
            project=project,
            chunk_size=chunk_mib << 20,
            progress=as_bar(progress),
        )
    if as_json:
        emit_json(image)
        return
    note = f" (resumed at {human_bytes(resumed)})" if resumed else ""
    err_console.print(
        f"image {image['name']}: {human_bytes(image['size'])}, digest {image['digest']}{note}",
        highlight=False,
    )


SITE_IMAGE_COLUMNS = [
    ("NAME", lambda e: e["name"]),
    ("DIGEST", lambda e: e["digest"][:16]),
    ("KIND", lambda e: e["kind"]),
    ("SIZE", lambda e: human_bytes(e["size"])),
    ("STAGED", lambda e: "yes" if e["staged"] else "no"),
    ("CACHED", lambda e: _cached(e)),
    ("LAST USED", lambda e: ago(e["last_used"]) if e["last_used"] else "-"),
]


def _cached(entry: dict[str, Any]) -> str:
    if entry["complete"]:
        return "complete"
    if not entry["cached"]:
        return "no" if entry["reported_at"] else "not reported"
    return f"{human_bytes(entry['fetched'])} ({pct(entry['fetched'] / (entry['size'] or 1))})"


@app.command("list")
def list_(
    ctx: typer.Context,
    project: str | None = typer.Option(None, "--project", help="Only this project."),
    site: str | None = typer.Option(
        None, "--site", "-s", help="What this site should hold and holds, instead."
    ),
    as_json: bool = JsonOpt,
    output: OutputFormat | None = OutputOpt,
) -> None:
    """Base images in the catalog, or a site's pre-staged images and cache (--site)."""
    client = ctx_of(ctx).client()
    fmt = output_format(output, as_json)
    if site is not None:
        show(client.get(f"/v1/sites/{site}/images"), SITE_IMAGE_COLUMNS, fmt)
        return
    show(client.get("/v1/images", project=project), IMAGE_COLUMNS, fmt)


@app.command("show")
def show_(
    ctx: typer.Context,
    image: str = typer.Argument(..., help="Digest, name or digest prefix."),
    as_json: bool = JsonOpt,
    output: OutputFormat | None = OutputOpt,
) -> None:
    """One base image."""
    show_one(ctx_of(ctx).client().get(f"/v1/images/{image}"), output_format(output, as_json))


@app.command("prestage")
def prestage(
    ctx: typer.Context,
    image: str = typer.Argument(..., help="Digest, name or digest prefix."),
    site: str = typer.Option(..., "--site", "-s", help="Site that should hold the image."),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Follow the fetch to the end."),
    timeout: float = typer.Option(
        3600.0, "--timeout", min=0, help="Give up waiting after this many seconds."
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Ask a site to hold a base image ahead of need, and follow its agent's fetch."""
    client = ctx_of(ctx).client()
    entry = client.post(f"/v1/sites/{site}/images", {"image": image})
    if wait and not entry["complete"]:
        entry = _follow(client, site, entry, timeout)
    if as_json:
        emit_json(entry)
    elif entry["complete"]:
        err_console.print(f"site {site} holds {entry['name']} ({entry['digest'][:16]})")
    else:
        err_console.print(
            f"site {site} will fetch {entry['name']} ({entry['digest'][:16]}); "
            f"follow with: cloudlet image prestage --site {site} {entry['digest'][:16]}",
            highlight=False,
        )


def _follow(client: Client, site: str, entry: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Poll the site's images until the agent reports this one complete."""
    digest, deadline = entry["digest"], time.monotonic() + timeout
    failure, warned = None, False
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TransferSpeedColumn,
    )

    bars = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=err_console,
        transient=True,
        disable=not err_console.is_terminal,
    )
    with bars:
        task = bars.add_task(f"{site}: {entry['name']}", total=entry["size"] or None)
        while not entry["complete"]:
            if time.monotonic() >= deadline:
                failure = (
                    f"timed out after {timeout:.0f}s: site {site} has "
                    f"{human_bytes(entry['fetched'])} of {human_bytes(entry['size'])}"
                )
                break
            if entry["reported_at"] is None and not warned:
                avail = client.get(f"/v1/sites/{site}")["availability"]
                err_console.print(
                    f"waiting for site {site}'s agent to report its cache "
                    f"(availability: {avail}); --no-wait returns at once",
                    highlight=False,
                )
                warned = True
            time.sleep(1.0)
            found = [e for e in client.get(f"/v1/sites/{site}/images") if e["digest"] == digest]
            if not found:
                failure = f"image {digest[:16]} is no longer staged at site {site}"
                break
            entry = found[0]
            bars.update(task, completed=entry["fetched"])
    if failure is not None:
        err_console.print(f"[red]error:[/] {failure}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    return entry


@app.command("sign")
def sign(
    ctx: typer.Context,
    image: str = typer.Argument(..., help="Raw image file, or its digest, name or prefix."),
    key: str = typer.Option(..., "--key", "-k", help="Publisher key name or key file."),
    as_json: bool = JsonOpt,
) -> None:
    """Sign an image's digest and upload the signature (checked by the controller)."""
    from cloudlet.cli._signing import sign_artifact
    from cloudlet.schemas.artifacts import ArtifactKind

    stored = sign_artifact(ctx_of(ctx).client(), ArtifactKind.IMAGE, image, key)
    if as_json:
        emit_json(stored)
        return
    err_console.print(
        f"image {stored['digest']} signed by {stored['key_name']} ({stored['kid']})",
        highlight=False,
    )
