"""Input types: request validation and the small helpers on sites."""

from __future__ import annotations

import math

import pytest
from placement_fakes import VIENNA, make_request, make_site

from cloudlet.errors import InvalidInputError
from cloudlet.placement import PlacementRequest, Resources


def test_free_and_location() -> None:
    site = make_site("a", vcpus=4, memory_mib=1024, disk_gib=10, allocated=Resources(1, 24, 2.5))
    assert site.free == Resources(3, 1000, 7.5)
    assert site.location is None
    assert make_site("b", at=VIENNA).location == VIENNA


def test_request_normalises_collections() -> None:
    req = make_request(preferred_sites=["a", "a"], excluded_sites=("b",))
    assert req.preferred_sites == frozenset({"a"})
    assert req.excluded_sites == frozenset({"b"})
    assert req.client_location is None
    assert make_request(client=VIENNA).client_location == VIENNA


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"memory_mib": -1}, "must not be negative"),
        ({"vcpus": -0.5}, "must not be negative"),
        ({"latency_bound_ms": 0}, "latency bound must be positive"),
        ({"client": (91.0, 0.0)}, "is invalid"),
        ({"client": (0.0, -181.0)}, "is invalid"),
        ({"client": (math.nan, 0.0)}, "is invalid"),
        ({"constraints": "label:gpu"}, "must be a list of strings"),
        ({"constraints": ["label:gpu", "gpu"]}, "unknown field 'gpu'"),
    ],
)
def test_request_rejects_nonsense(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(InvalidInputError, match="app 'web'") as info:
        make_request(**kwargs)  # type: ignore[arg-type]
    assert fragment in str(info.value)


@pytest.mark.parametrize("where", [{"client_latitude": 48.0}, {"client_longitude": 16.0}])
def test_request_needs_both_coordinates(where: dict[str, float]) -> None:
    with pytest.raises(InvalidInputError, match="needs both latitude and longitude"):
        PlacementRequest("web", Resources(1, 1, 1), **where)  # type: ignore[arg-type]
