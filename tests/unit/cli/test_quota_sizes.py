"""The sizes and limits `cloudlet project quota set` takes."""

from __future__ import annotations

import pytest

from cloudlet.cli.quota import _limit, _mib, parse_size
from cloudlet.errors import InvalidInputError


@pytest.mark.parametrize(
    ("text", "size"),
    [("10GiB", 10 * 1024**3), ("512 MiB", 512 * 1024**2), ("2TB", 2 * 10**12),
     ("1.5KiB", 1536), ("4096", 4096), ("7b", 7)],
)  # fmt: skip
def test_sizes_take_iec_and_si_units(text: str, size: int) -> None:
    assert parse_size(text, "--x") == size


@pytest.mark.parametrize("text", ["", "GiB", "ten", "5 parsecs", "-1GiB"])
def test_a_bad_size_names_the_option(text: str) -> None:
    with pytest.raises(InvalidInputError, match="--image-bytes"):
        parse_size(text, "--image-bytes")


def test_memory_is_mib_bare_or_with_a_unit() -> None:
    assert _mib("32GiB") == 32 * 1024 and _mib("512") == 512
    with pytest.raises(InvalidInputError, match="whole number of MiB"):
        _mib("1000KiB")


def test_unlimited_clears_and_absent_leaves_alone() -> None:
    assert _limit(None, "--instances", int) == (False, None)
    assert _limit("unlimited", "--instances", int) == (True, None)
    assert _limit("10", "--instances", int) == (True, 10)
    with pytest.raises(InvalidInputError, match="--instances"):
        _limit("ten", "--instances", int)
