"""`cloudlet image ...`: base images (index for overlay dedup)."""

from __future__ import annotations

from pathlib import Path

import typer

from cloudlet.cli._output import emit_json, err_console
from cloudlet.cli.overlay import _progress, one_line_errors
from cloudlet.synthesis import build_index
from cloudlet.synthesis.index import index_path

app = typer.Typer(help="Base images.", no_args_is_help=True)


@app.command("index")
@one_line_errors
def index(
    base: Path = typer.Argument(..., help="Base image (raw or qcow2)."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
) -> None:
    """Hash a base image and cache its chunk index beside it (used by overlay create)."""
    with _progress(quiet) as progress:
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
