"""Placement: pick the site for an instance with filters and weighers over a site snapshot.

Pure functions over plain values: no I/O, no database, no HTTP. The controller
maps its rows onto :class:`SiteCandidate` / :class:`PlacementRequest` and calls
:func:`place` (or :func:`rank` for discovery).
"""

from __future__ import annotations

from cloudlet.placement.config import DEFAULT_FILTERS, DEFAULT_WEIGHERS, PlacementConfig
from cloudlet.placement.constraints import Constraint, Op, parse_constraint, parse_constraints
from cloudlet.placement.engine import (
    PlacementDecision,
    RankedSite,
    Rejection,
    WeightScore,
    normalize,
    place,
    rank,
)
from cloudlet.placement.filters import (
    FILTERS,
    BaseFilter,
    CapacityFilter,
    ConstraintsFilter,
    ExcludedFilter,
    Filter,
    LatencyFilter,
    OnlineFilter,
)
from cloudlet.placement.geo import estimate_rtt_ms, great_circle_km
from cloudlet.placement.model import PlacementRequest, Resources, SiteCandidate, Utilization
from cloudlet.placement.weighers import (
    WEIGHERS,
    LoadWeigher,
    PreferenceWeigher,
    ProximityWeigher,
    Weigher,
)

__all__ = [
    "DEFAULT_FILTERS",
    "DEFAULT_WEIGHERS",
    "FILTERS",
    "WEIGHERS",
    "BaseFilter",
    "CapacityFilter",
    "Constraint",
    "ConstraintsFilter",
    "ExcludedFilter",
    "Filter",
    "LatencyFilter",
    "LoadWeigher",
    "OnlineFilter",
    "Op",
    "PlacementConfig",
    "PlacementDecision",
    "PlacementRequest",
    "PreferenceWeigher",
    "ProximityWeigher",
    "RankedSite",
    "Rejection",
    "Resources",
    "SiteCandidate",
    "Utilization",
    "Weigher",
    "WeightScore",
    "estimate_rtt_ms",
    "great_circle_km",
    "normalize",
    "parse_constraint",
    "parse_constraints",
    "place",
    "rank",
]
