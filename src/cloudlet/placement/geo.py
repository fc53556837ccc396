"""Distance and a deliberately simple round-trip-time model for latency-aware placement.

RTT model (replaceable; pass another estimator to :class:`~.filters.LatencyFilter`)::

    rtt_ms = 2 * distance_km / FIBER_KM_PER_MS + ACCESS_LATENCY_MS

Light in fibre covers about 200 km per millisecond; the fixed access term stands
for the radio / last-mile hop and queueing at both ends. Real paths are longer
than great circles, so this under-estimates far sites; it is a first filter, to be
replaced by measured RTTs when agents report them.
"""

from __future__ import annotations

import math

__all__ = [
    "ACCESS_LATENCY_MS",
    "EARTH_RADIUS_KM",
    "FIBER_KM_PER_MS",
    "MAX_DISTANCE_KM",
    "estimate_rtt_ms",
    "great_circle_km",
]

EARTH_RADIUS_KM = 6371.0
#: Half the Earth's circumference: no two points are further apart.
MAX_DISTANCE_KM = math.pi * EARTH_RADIUS_KM
FIBER_KM_PER_MS = 200.0
ACCESS_LATENCY_MS = 5.0


def great_circle_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Haversine distance in km between two ``(latitude, longitude)`` points in degrees."""
    lat1, lon1 = map(math.radians, a)
    lat2, lon2 = map(math.radians, b)
    h = (
        math.sin((lat2 - lat1) / 2) ** 2
        + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    )
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def estimate_rtt_ms(distance_km: float) -> float:
    """Estimated round trip in ms between a client and a site ``distance_km`` apart."""
    return 2 * distance_km / FIBER_KM_PER_MS + ACCESS_LATENCY_MS
