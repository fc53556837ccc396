"""Printing for the CLI: Rich tables for people, --json for scripts."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

console = Console()
err_console = Console(stderr=True)

Column = tuple[str, Callable[[dict[str, Any]], object]]


def emit_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


def table(
    rows: Sequence[dict[str, Any]], columns: Sequence[Column], title: str | None = None
) -> Table:
    out = Table(title=title, header_style="bold", expand=False)
    for name, _ in columns:
        out.add_column(name)
    for row in rows:
        out.add_row(*(_cell(get(row)) for _, get in columns))
    return out


def show(
    rows: Sequence[dict[str, Any]],
    columns: Sequence[Column],
    as_json: bool,
    title: str | None = None,
) -> None:
    if as_json:
        emit_json(list(rows))
    else:
        console.print(table(rows, columns, title))


def show_one(item: dict[str, Any], as_json: bool) -> None:
    if as_json:
        emit_json(item)
        return
    out = Table(show_header=False, box=None)
    out.add_column(style="bold")
    out.add_column()
    for key, value in item.items():
        out.add_row(key, _cell(value))
    console.print(out)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "-"
    return str(value)


def ago(iso: str | None) -> str:
    """'12s ago' from an ISO timestamp."""
    if not iso:
        return "never"
    then = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    seconds = max(0, int((datetime.now(UTC) - then).total_seconds()))
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    return f"{seconds // 3600}h ago"


def human_bytes(n: int | None) -> str:
    value = float(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


@contextlib.contextmanager
def progress_bars(quiet: bool) -> Iterator[Callable[[str, int, int], None] | None]:
    """A rich progress display on stderr; yields progress(phase, advance, total)."""
    if quiet or not err_console.is_terminal:
        yield None
        return
    bars = Progress(
        TextColumn("{task.description:>18}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    )
    tasks: dict[str, TaskID] = {}

    def update(phase: str, advance: int, total: int) -> None:
        if phase not in tasks:
            tasks[phase] = bars.add_task(phase, total=total or None)
        bars.update(tasks[phase], advance=advance)

    with bars:
        yield update
