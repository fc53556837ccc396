"""`cloudlet image ...`: base images (index for overlay dedup)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Base images.", no_args_is_help=True)
