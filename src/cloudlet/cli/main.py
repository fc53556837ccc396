"""The `cloudlet` command: one Typer app with a sub-command group per noun."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="cloudlet",
    help="Cloudlet: run applications at the edge of the network.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

# (module under cloudlet.cli, group name); each module exposes `app`.
_GROUPS: list[tuple[str, str]] = [
    ("overlay", "overlay"),
    ("image", "image"),
]

for _module, _name in _GROUPS:
    _sub = importlib.import_module(f"cloudlet.cli.{_module}")
    app.add_typer(_sub.app, name=_name)


def main() -> None:
    app()
