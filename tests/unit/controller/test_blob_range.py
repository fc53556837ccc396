"""The Range header as blob downloads read it (RFC 9110, section 14)."""

from __future__ import annotations

import pytest

from cloudlet.controller.api._blob_response import Unsatisfiable, parse_range


@pytest.mark.parametrize(
    ("header", "size", "wanted"),
    [
        (None, 10, None),
        ("bytes=0-0", 10, (0, 1)),
        ("bytes=2-5", 10, (2, 6)),
        ("bytes=2-", 10, (2, 10)),
        ("bytes=8-100", 10, (8, 10)),  # the end is clamped
        ("bytes=-3", 10, (7, 10)),
        ("bytes=-30", 10, (0, 10)),
        ("bytes = 1 - 2", 10, (1, 3)),
        ("bytes=5-2", 10, None),  # invalid: ignored, the whole blob
        ("bytes=0-1,4-5", 10, None),  # several ranges: ignored
        ("items=0-1", 10, None),  # another unit: ignored
        ("bytes=-", 10, None),
        ("bytes=abc", 10, None),
    ],
)
def test_satisfiable_or_ignored(header: str | None, size: int, wanted: tuple[int, int]) -> None:
    assert parse_range(header, size) == wanted


@pytest.mark.parametrize(("header", "size"), [("bytes=10-", 10), ("bytes=-0", 10), ("bytes=0-", 0)])
def test_unsatisfiable(header: str, size: int) -> None:
    with pytest.raises(Unsatisfiable):
        parse_range(header, size)
