"""What every command gets from the root options: settings, a lazy client, shared options.

Settings and the HTTP client are imported when a command first asks for them, so
that `--help` and argument errors never pay for pydantic-settings and httpx.
"""

from __future__ import annotations

import enum
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from cloudlet.errors import InvalidInputError

if TYPE_CHECKING:
    from cloudlet.cli._client import Client
    from cloudlet.cli._config import ClientConfig
    from cloudlet.settings import Settings

#: Exit code of a command that would have asked a question but has no terminal to ask on.
EXIT_NEEDS_YES = 3


@dataclass
class CliContext:
    config_file: Path | None = None
    url: str | None = None
    token: str | None = None
    _client: Client | None = field(default=None, repr=False)

    def settings(self, **overrides: object) -> Settings:
        from cloudlet.settings import load_settings

        return load_settings(
            self.config_file, controller_url=self.url, token=self.token, **overrides
        )

    def client(self) -> Client:
        if self._client is None:
            from cloudlet.cli._client import Client

            self._client = Client(self.client_config())
        return self._client

    def client_config(self) -> ClientConfig:
        from cloudlet.cli._config import ClientConfig, fast_client_config

        config = fast_client_config(self.config_file, self.url, self.token)
        if config is None:
            s = self.settings()
            controller = s.controller
            config = ClientConfig(
                s.controller_url, s.token, controller.port, controller.data_dir, s.ca_file
            )
        return config


def ctx_of(ctx: typer.Context) -> CliContext:
    obj = ctx.find_root().obj
    if not isinstance(obj, CliContext):
        obj = CliContext()
        ctx.find_root().obj = obj
    return obj


class OutputFormat(enum.StrEnum):
    TABLE = "table"
    WIDE = "wide"
    JSON = "json"
    YAML = "yaml"
    NAME = "name"


JsonOpt = typer.Option(False, "--json", help="Print JSON (the same as --output json).")
OutputOpt = typer.Option(
    None,
    "--output",
    "-o",
    help="table (the default), wide (more columns), json, yaml or name (one per line).",
)


def output_format(output: OutputFormat | None, as_json: bool) -> OutputFormat:
    """The format a command prints in: --output, else --json, else a table."""
    if output is not None:
        return output
    return OutputFormat.JSON if as_json else OutputFormat.TABLE


def confirm(question: str, yes: bool) -> None:
    """Ask ``question`` on the terminal unless ``yes``; without a terminal, refuse.

    Without a terminal nobody can answer: say in one line that --yes is needed and
    exit with :data:`EXIT_NEEDS_YES`, distinct from errors (1) and usage errors (2).
    """
    if yes:
        return
    if not sys.stdin.isatty():
        typer.echo(f"{question}: not a terminal, so nobody can confirm; pass --yes", err=True)
        raise typer.Exit(EXIT_NEEDS_YES)
    typer.confirm(question, abort=True)


def parse_pairs(values: list[str] | None, what: str = "label") -> dict[str, str]:
    """k=v flags into a dict, refusing anything else with a clear message."""
    out: dict[str, str] = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{what} must look like key=value, got {item!r}")
        out[key] = value
    return out


def parse_near(value: str | None) -> tuple[float | None, float | None]:
    """A ``--near LAT,LON`` option as a position (None, None when not given)."""
    if value is None:
        return None, None
    try:
        lat, lon = (float(p) for p in value.split(","))
    except ValueError as exc:
        raise InvalidInputError(f"--near must be LAT,LON, got {value!r}") from exc
    return lat, lon
