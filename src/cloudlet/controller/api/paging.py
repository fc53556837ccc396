"""Paged lists: the ``limit`` and ``cursor`` parameters, and the next page's headers.

A list answers a JSON array, as it always has; when more rows follow, the answer
carries ``X-Next-Cursor: CURSOR`` and ``Link: <same query, cursor=CURSOR>; rel="next"``
(a reference relative to the request's URL, RFC 8288). No such headers: last page.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query, Request, Response

#: The largest page of sites and instances, and the page they answer by default.
MAX_LIMIT = 1000

Cursor = Annotated[
    str | None,
    Query(
        max_length=1024,
        description="Where to continue: the X-Next-Cursor (or Link rel=next) of the page "
        "before, unchanged. Without it, the first page.",
    ),
]

#: The success answer of a paged list, as the OpenAPI document says it.
PAGED: dict[int | str, dict[str, Any]] = {
    200: {
        "headers": {
            "X-Next-Cursor": {
                "description": "The cursor of the next page; absent on the last page.",
                "schema": {"type": "string"},
            },
            "Link": {
                "description": 'The next page as `<URL>; rel="next"`; absent on the last page.',
                "schema": {"type": "string"},
            },
        }
    }
}


def limit_query(default: int, maximum: int) -> Any:
    return Query(
        default,
        ge=1,
        le=maximum,
        description=f"At most this many rows (1 to {maximum}; default {default}).",
    )


def set_next(request: Request, response: Response, cursor: str | None) -> None:
    """Say where the next page starts (nothing when this is the last)."""
    if cursor is None:
        return
    url = request.url.include_query_params(cursor=cursor)
    response.headers["X-Next-Cursor"] = cursor
    response.headers["Link"] = f'<{url.path}?{url.query}>; rel="next"'
