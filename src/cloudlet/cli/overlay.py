"""`cloudlet overlay ...`: create, inspect, verify and apply VM overlays."""

from __future__ import annotations

import typer

app = typer.Typer(help="Create, inspect, verify and apply VM overlays.", no_args_is_help=True)
