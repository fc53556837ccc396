"""Placement weighers: each returns a raw number, higher meaning better.

The engine normalises each weigher's raw values to 0..1 over the candidates and
applies the configured multiplier (a negative multiplier inverts a preference,
e.g. pack instead of spread). :data:`WEIGHERS` is the registry of built-ins.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Protocol, runtime_checkable

from cloudlet.placement.geo import MAX_DISTANCE_KM, great_circle_km
from cloudlet.placement.model import PlacementRequest, SiteCandidate

__all__ = [
    "WEIGHERS",
    "LoadWeigher",
    "PreferenceWeigher",
    "ProximityWeigher",
    "Weigher",
]


@runtime_checkable
class Weigher(Protocol):
    """What the engine needs from a weigher."""

    name: str

    def __call__(self, site: SiteCandidate, request: PlacementRequest) -> float:
        """Return the raw weight of ``site`` for ``request``; higher is better."""
        ...


def _fraction(used: float, total: float) -> float:
    if total <= 0:
        return 1.0
    return max(used / total, 0.0)


class LoadWeigher:
    """Prefers less loaded sites: ``1 - mean(load of cpu, memory, disk)``.

    The load of one resource is the larger of its allocated fraction (desired
    state) and its measured utilization (when the agent reported one). A site
    with zero capacity of a resource counts as fully loaded on it.
    """

    name = "load"

    def __call__(self, site: SiteCandidate, request: PlacementRequest) -> float:
        cap, alloc, util = site.capacity, site.allocated, site.utilization
        loads = [
            _fraction(alloc.vcpus, cap.vcpus),
            _fraction(alloc.memory_mib, cap.memory_mib),
            _fraction(alloc.disk_gib, cap.disk_gib),
        ]
        if util is not None:
            loads = [
                max(a, u) for a, u in zip(loads, (util.cpu, util.memory, util.disk), strict=True)
            ]
        return 1.0 - sum(loads) / len(loads)


class ProximityWeigher:
    """Prefers sites near the client: raw value is minus the great-circle distance in km.

    0 for every site when the request has no client location. A site without a
    location counts as being as far as anything can be (half the Earth's
    circumference), so it never beats a site known to be closer.
    """

    name = "proximity"

    def __call__(self, site: SiteCandidate, request: PlacementRequest) -> float:
        client = request.client_location
        if client is None:
            return 0.0
        where = site.location
        if where is None:
            return -MAX_DISTANCE_KM
        return -great_circle_km(client, where)


class PreferenceWeigher:
    """Prefers the sites the request names in ``preferred_sites``: 1.0 for them, else 0.0."""

    name = "preference"

    def __call__(self, site: SiteCandidate, request: PlacementRequest) -> float:
        return 1.0 if site.site_id in request.preferred_sites else 0.0


#: Registry of the built-in weighers, by name.
WEIGHERS: Mapping[str, Weigher] = MappingProxyType(
    {w.name: w for w in (LoadWeigher(), ProximityWeigher(), PreferenceWeigher())}
)
