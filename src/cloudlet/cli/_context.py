"""What every command gets from the root options: settings and a lazy client."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import typer

from cloudlet.cli._client import Client
from cloudlet.settings import Settings, load_settings


@dataclass
class CliContext:
    config_file: Path | None = None
    url: str | None = None
    token: str | None = None
    _client: Client | None = field(default=None, repr=False)

    def settings(self, **overrides: object) -> Settings:
        return load_settings(
            self.config_file, controller_url=self.url, token=self.token, **overrides
        )

    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.settings())
        return self._client


def ctx_of(ctx: typer.Context) -> CliContext:
    obj = ctx.find_root().obj
    if not isinstance(obj, CliContext):
        obj = CliContext()
        ctx.find_root().obj = obj
    return obj


JsonOpt = typer.Option(False, "--json", help="Print JSON instead of a table.")


def parse_pairs(values: list[str] | None, what: str = "label") -> dict[str, str]:
    """k=v flags into a dict, refusing anything else with a clear message."""
    out: dict[str, str] = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{what} must look like key=value, got {item!r}")
        out[key] = value
    return out
