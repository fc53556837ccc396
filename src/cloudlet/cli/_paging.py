"""Reading a paged list (sites, instances, events): follow its cursor as far as asked."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from cloudlet.cli._client import Client

#: The largest page the API gives of sites and instances.
PAGE = 1000

AllOpt = typer.Option(
    False, "--all", help="Every row: follow the pages to the end (--limit rows a page)."
)


def collect(
    c: Client, path: str, limit: int | None, every: bool, page: int = PAGE, **params: Any
) -> tuple[list[dict[str, Any]], bool]:
    """Rows of ``path`` in its order: all of them with ``every`` (``limit`` a page), else
    the first ``limit`` (None: the API's first page). Returns them and whether more
    were left out."""
    rows: list[dict[str, Any]] = []
    cursor = None
    while True:
        if limit is None:
            want = page if every else None
        else:
            want = min(page, limit if every else limit - len(rows))
        got, cursor = c.get_page(path, **params, limit=want, cursor=cursor)
        rows += got
        if cursor is None or not got:
            return rows, False
        if not every and (limit is None or len(rows) >= limit):
            return rows, True


def more_note(noun: str, shown: int, command: str) -> None:
    """Say on stderr that the list goes on, and how to see the rest."""
    from cloudlet.cli._output import err_console

    err_console.print(
        f"[yellow]note:[/] showing the first {shown} {noun}; more exist "
        f"({command} --all for every one, or a larger --limit)",
        highlight=False,
    )
