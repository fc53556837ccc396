"""Keyset paging: opaque cursors naming the last row of a page, and the SQL after it.

A cursor is base64url (unpadded) of ``{"v": 1, "r": RESOURCE, "k": [KEY...]}``: the
sort key of the last row shown. The next page is the rows strictly after that key
in the list's order, so a page never repeats or skips a row when rows are added
or removed meanwhile (OFFSET would). Anything that does not decode to a cursor of
the right resource and shape is an :class:`InvalidInputError`, never a crash.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, and_, or_

from cloudlet.errors import InvalidInputError

VERSION = 1
#: Longest cursor accepted (a key of a few names and a timestamp is ~200).
MAX_CURSOR = 1024

T = TypeVar("T")

#: One element of a key: how it is read back from JSON.
KeyType = type[str] | type[int] | type[datetime]


def encode(resource: str, key: Sequence[object]) -> str:
    """The cursor after the row whose sort key is ``key``."""
    values = [v.isoformat() if isinstance(v, datetime) else v for v in key]
    raw = json.dumps({"v": VERSION, "r": resource, "k": values}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).rstrip(b"=").decode()


def decode(resource: str, cursor: str, types: Sequence[KeyType]) -> tuple[Any, ...]:
    """The key a cursor of ``resource`` names, each element of the type in ``types``.

    Raises:
        InvalidInputError: not a cursor, another version, or another list's cursor.
    """
    bad = InvalidInputError(
        "cursor: not a cursor of this list (pass the X-Next-Cursor or Link rel=next "
        "of an earlier answer unchanged)"
    )
    if len(cursor) > MAX_CURSOR:
        raise bad
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        doc = json.loads(raw)
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise bad from exc
    if not isinstance(doc, dict) or doc.get("v") != VERSION or doc.get("r") != resource:
        raise bad
    values = doc.get("k")
    if not isinstance(values, list) or len(values) != len(types):
        raise bad
    key: list[Any] = []
    for value, kind in zip(values, types, strict=True):
        if kind is datetime:
            if not isinstance(value, str):
                raise bad
            try:
                when = datetime.fromisoformat(value)
            except ValueError as exc:
                raise bad from exc
            if when.tzinfo is None:
                raise bad
            key.append(when.astimezone(UTC))
        elif kind is int:
            if not isinstance(value, int) or isinstance(value, bool) or abs(value) >= 2**63:
                raise bad
            key.append(value)
        else:
            if not isinstance(value, str) or "\x00" in value:
                raise bad
            key.append(value)
    return tuple(key)


def after(
    columns: Sequence[Any], key: Sequence[object], descending: bool = False
) -> ColumnElement[bool]:
    """Rows strictly after ``key`` in the order of ``columns`` (all ascending, or all
    descending), spelled out as ``a > x OR (a = x AND b > y) ...`` rather than a row
    value, so that an index on the leading column serves it on every backend."""
    terms = []
    for i, (col, value) in enumerate(zip(columns, key, strict=True)):
        past = col < value if descending else col > value
        terms.append(and_(*(c == v for c, v in zip(columns[:i], key[:i], strict=True)), past))
    return or_(*terms)


def split_page(rows: Sequence[T], limit: int) -> tuple[list[T], T | None]:
    """A page of at most ``limit`` of ``rows`` (fetched as ``limit + 1``), and its last
    row when more follow: the one the next page's cursor names."""
    page = list(rows[:limit])
    return page, page[-1] if len(rows) > limit else None
