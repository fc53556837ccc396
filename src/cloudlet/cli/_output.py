"""Printing for the CLI: Rich tables on a terminal, full plain columns otherwise, and
--output json|yaml|name for scripts.

Nothing a user may copy (an id, a token, an endpoint, a command) is ever cut: on a
terminal long cells fold onto the next line, and without one the columns are as
wide as their widest cell, whatever the width, as kubectl prints them.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rich.console import Console

if TYPE_CHECKING:
    from rich.table import Table

from cloudlet.cli._context import OutputFormat

# soft_wrap: a long line (a command to copy) is never broken at the console width.
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)

Column = tuple[str, Callable[[dict[str, Any]], object]]


def emit_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


def emit_yaml(data: Any) -> None:
    import yaml

    # Through JSON first, so timestamps and enums print as the JSON output has them.
    print(yaml.safe_dump(json.loads(json.dumps(data, default=str)), sort_keys=True), end="")


def table(
    rows: Sequence[dict[str, Any]], columns: Sequence[Column], title: str | None = None
) -> Table:
    """A Rich table whose cells fold instead of being cut."""
    from rich.table import Table

    out = Table(title=title, header_style="bold", expand=False)
    for name, _ in columns:
        out.add_column(name, overflow="fold")
    for row in rows:
        out.add_row(*(_cell(get(row)) for _, get in columns))
    return out


def plain_table(rows: Sequence[dict[str, Any]], columns: Sequence[Column]) -> str:
    """Columns padded to their widest cell, separated by three spaces, never cut."""
    cells = [[name for name, _ in columns]]
    cells += [[_cell(get(row)) for _, get in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = [
        "   ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in cells
    ]
    return "\n".join(lines)


def _name(row: dict[str, Any]) -> str:
    return str(row.get("name") or row.get("id") or row.get("digest") or "")


def show(
    rows: Sequence[dict[str, Any]],
    columns: Sequence[Column],
    fmt: OutputFormat | bool,
    title: str | None = None,
    *,
    wide: Sequence[Column] = (),
    name: Callable[[dict[str, Any]], str] = _name,
) -> None:
    """Print ``rows`` as ``fmt`` says (True: json, False: table); ``wide`` adds columns."""
    fmt = _fmt(fmt)
    if fmt is OutputFormat.JSON:
        emit_json(list(rows))
    elif fmt is OutputFormat.YAML:
        emit_yaml(list(rows))
    elif fmt is OutputFormat.NAME:
        for row in rows:
            print(name(row))
    else:
        cols = [*columns, *wide] if fmt is OutputFormat.WIDE else list(columns)
        if console.is_terminal:
            console.print(table(rows, cols, title))
        else:
            print(plain_table(rows, cols))


def show_one(item: dict[str, Any], fmt: OutputFormat | bool) -> None:
    """Print one item: key/value lines, or json, yaml or its name."""
    fmt = _fmt(fmt)
    if fmt is OutputFormat.JSON:
        emit_json(item)
    elif fmt is OutputFormat.YAML:
        emit_yaml(item)
    elif fmt is OutputFormat.NAME:
        print(_name(item))
    elif console.is_terminal:
        from rich.table import Table

        out = Table(show_header=False, box=None)
        out.add_column(style="bold", no_wrap=True)
        out.add_column(overflow="fold")
        for key, value in item.items():
            out.add_row(key, _cell(value))
        console.print(out)
    else:
        width = max((len(k) for k in item), default=0)
        for key, value in item.items():
            print(f"{key + ':':<{width + 1}} {_cell(value)}")


def _fmt(fmt: OutputFormat | bool) -> OutputFormat:
    if isinstance(fmt, OutputFormat):
        return fmt
    return OutputFormat.JSON if fmt else OutputFormat.TABLE


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
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TaskID,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

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
