"""Placement's input types: a snapshot of candidate sites and one request.

The controller maps its DB rows onto these; placement never sees the DB.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from cloudlet.errors import InvalidInputError
from cloudlet.placement.constraints import Constraint, parse_constraints

__all__ = ["PlacementRequest", "Resources", "SiteCandidate", "Utilization"]


@dataclass(frozen=True)
class Resources:
    """An amount of compute: vCPUs, memory and disk."""

    vcpus: float = 0.0
    memory_mib: int = 0
    disk_gib: float = 0.0

    def __sub__(self, other: Resources) -> Resources:
        return Resources(
            vcpus=self.vcpus - other.vcpus,
            memory_mib=self.memory_mib - other.memory_mib,
            disk_gib=self.disk_gib - other.disk_gib,
        )


@dataclass(frozen=True)
class Utilization:
    """Fractions (0..1) of a site's capacity in use, as its agent last reported."""

    cpu: float = 0.0
    memory: float = 0.0
    disk: float = 0.0


@dataclass(frozen=True)
class SiteCandidate:
    """One site as placement sees it.

    ``allocated`` is what instances already placed there consume (from desired
    state); ``utilization`` is what the agent measured, if it reported anything.
    ``state`` is the site's lifecycle state (``online``, ``offline``,
    ``draining``, ``decommissioned``, ...); ``online`` is the availability verdict.
    """

    site_id: str
    name: str
    capacity: Resources
    online: bool = True
    state: str = "online"
    region: str | None = None
    latitude: float | None = None
    longitude: float | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    allocated: Resources = field(default_factory=Resources)
    utilization: Utilization | None = None
    images: frozenset[str] = frozenset()
    #: Measured last-mile RTT of the site (ms); None: the RTT model's default term.
    access_latency_ms: float | None = None

    @property
    def free(self) -> Resources:
        """Capacity minus allocation (negative when overcommitted)."""
        return self.capacity - self.allocated

    @property
    def location(self) -> tuple[float, float] | None:
        """``(latitude, longitude)``, or ``None`` when either is unknown."""
        if self.latitude is None or self.longitude is None:
            return None
        return (self.latitude, self.longitude)


@dataclass(frozen=True)
class PlacementRequest:
    """What one app instance needs and where its client is.

    ``constraints`` may be given as strings; they are parsed once, here.
    ``preferred_sites`` and ``excluded_sites`` hold site ids.

    Raises:
        InvalidInputError: a bad constraint, negative resources, a non-positive
            latency bound, or a client location with only one coordinate or
            out of range.
    """

    app: str
    resources: Resources
    constraints: Sequence[Constraint | str] = ()
    latency_bound_ms: int | None = None
    client_latitude: float | None = None
    client_longitude: float | None = None
    preferred_sites: frozenset[str] = frozenset()
    excluded_sites: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if isinstance(self.constraints, str):  # would otherwise parse one letter at a time
            raise InvalidInputError(
                f"app {self.app!r}: constraints must be a list of strings, "
                f"got the string {self.constraints!r}"
            )
        try:
            parsed = parse_constraints(self.constraints)
        except ValueError as exc:
            raise InvalidInputError(f"app {self.app!r}: {exc}") from exc
        # Frozen: normalise through object.__setattr__, as dataclasses do themselves.
        object.__setattr__(self, "constraints", parsed)
        object.__setattr__(self, "preferred_sites", frozenset(self.preferred_sites))
        object.__setattr__(self, "excluded_sites", frozenset(self.excluded_sites))
        r = self.resources
        if min(r.vcpus, r.memory_mib, r.disk_gib) < 0:
            raise InvalidInputError(f"app {self.app!r}: resources must not be negative: {r}")
        if self.latency_bound_ms is not None and self.latency_bound_ms <= 0:
            raise InvalidInputError(
                f"app {self.app!r}: latency bound must be positive, got {self.latency_bound_ms} ms"
            )
        lat, lon = self.client_latitude, self.client_longitude
        if (lat is None) != (lon is None):
            raise InvalidInputError(
                f"app {self.app!r}: client location needs both latitude and longitude"
            )
        if lat is not None and lon is not None and not _valid_coords(lat, lon):
            raise InvalidInputError(f"app {self.app!r}: client location ({lat}, {lon}) is invalid")

    @property
    def parsed_constraints(self) -> tuple[Constraint, ...]:
        """The constraints, parsed (typed view of ``constraints``)."""
        return tuple(c for c in self.constraints if isinstance(c, Constraint))

    @property
    def client_location(self) -> tuple[float, float] | None:
        """``(latitude, longitude)`` of the client, or ``None`` when not given."""
        if self.client_latitude is None or self.client_longitude is None:
            return None
        return (self.client_latitude, self.client_longitude)


def _valid_coords(lat: float, lon: float) -> bool:
    return math.isfinite(lat) and math.isfinite(lon) and -90 <= lat <= 90 and -180 <= lon <= 180
