"""Placement filters: predicates that drop sites unable to host a request.

A filter is called as ``flt(site, request) -> bool`` and never mutates either.
Besides the predicate, each filter can say why it rejected one site
(:meth:`Filter.reason`) and sum up all the sites it rejected for the "no site
fits" message (:meth:`Filter.summarize`). :data:`FILTERS` is the registry the
engine looks enabled names up in.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Protocol, runtime_checkable

from cloudlet.placement.geo import ACCESS_LATENCY_MS, estimate_rtt_ms, great_circle_km
from cloudlet.placement.model import PlacementRequest, SiteCandidate

__all__ = [
    "FILTERS",
    "UNSCHEDULABLE_STATES",
    "BaseFilter",
    "CapacityFilter",
    "ConstraintsFilter",
    "ExcludedFilter",
    "Filter",
    "LatencyFilter",
    "OnlineFilter",
]

#: Site states that take no new instances, whatever the availability verdict says.
UNSCHEDULABLE_STATES: frozenset[str] = frozenset(
    {"registered", "offline", "draining", "decommissioned"}
)


@runtime_checkable
class Filter(Protocol):
    """What the engine needs from a filter."""

    name: str

    def __call__(self, site: SiteCandidate, request: PlacementRequest) -> bool:
        """Return True when ``site`` may host ``request``."""
        ...

    def reason(self, site: SiteCandidate, request: PlacementRequest) -> str:
        """Say in a few words why ``site`` was rejected."""
        ...

    def summarize(self, sites: Sequence[SiteCandidate], request: PlacementRequest) -> list[str]:
        """Sum up the rejection of ``sites`` (all rejected by this filter) in short phrases."""
        ...


class BaseFilter:
    """Convenience base: subclasses set ``name`` and implement ``__call__``."""

    name = "base"

    def __call__(self, site: SiteCandidate, request: PlacementRequest) -> bool:
        raise NotImplementedError

    def reason(self, site: SiteCandidate, request: PlacementRequest) -> str:
        return f"rejected by {self.name}"

    def summarize(self, sites: Sequence[SiteCandidate], request: PlacementRequest) -> list[str]:
        return _grouped(self.reason(s, request) for s in sites)


def _grouped(reasons: Iterable[str]) -> list[str]:
    """``["offline", "offline", "draining"]`` -> ``["2 offline", "1 draining"]``."""
    counts = Counter(reasons)
    return [f"{n} {what}" for what, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def _verb(n: int, singular: str, plural: str) -> str:
    return singular if n == 1 else plural


class ExcludedFilter(BaseFilter):
    """Drops sites the request excludes (e.g. the site being drained)."""

    name = "excluded"

    def __call__(self, site: SiteCandidate, request: PlacementRequest) -> bool:
        return site.site_id not in request.excluded_sites

    def reason(self, site: SiteCandidate, request: PlacementRequest) -> str:
        return "excluded"


class OnlineFilter(BaseFilter):
    """Drops sites that are not online, or whose state takes no new instances.

    A site passes when its ``online`` verdict is true and its ``state`` is not in
    :data:`UNSCHEDULABLE_STATES` (not yet enrolled, offline, draining, decommissioned).
    """

    name = "online"

    def __call__(self, site: SiteCandidate, request: PlacementRequest) -> bool:
        return site.online and site.state not in UNSCHEDULABLE_STATES

    def reason(self, site: SiteCandidate, request: PlacementRequest) -> str:
        if site.state in UNSCHEDULABLE_STATES:
            return site.state
        return "offline"


# (attribute, display name, unit) in the order a shortfall is reported.
_RESOURCES: tuple[tuple[str, str, str], ...] = (
    ("vcpus", "vCPUs", ""),
    ("memory_mib", "memory", " MiB"),
    ("disk_gib", "disk", " GiB"),
)


def _num(value: float) -> str:
    return f"{value:g}"


class CapacityFilter(BaseFilter):
    """Drops sites whose free capacity (capacity - allocated) cannot hold the request."""

    name = "capacity"

    def __call__(self, site: SiteCandidate, request: PlacementRequest) -> bool:
        return self._short(site, request) is None

    @staticmethod
    def _short(site: SiteCandidate, request: PlacementRequest) -> str | None:
        free, need = site.free, request.resources
        for attr, _, _ in _RESOURCES:
            if getattr(need, attr) > getattr(free, attr):
                return attr
        return None

    def reason(self, site: SiteCandidate, request: PlacementRequest) -> str:
        attr = self._short(site, request)
        for a, label, unit in _RESOURCES:
            if a == attr:
                need = getattr(request.resources, a)
                has = max(getattr(site.free, a), 0)
                return f"lacks {label} (needs {_num(need)}{unit}, has {_num(has)} free)"
        return "fits"

    def summarize(self, sites: Sequence[SiteCandidate], request: PlacementRequest) -> list[str]:
        out = []
        for attr, label, unit in _RESOURCES:
            short = [s for s in sites if self._short(s, request) == attr]
            if short:
                best = max(max(getattr(s.free, attr), 0) for s in short)
                verb = _verb(len(short), "lacks", "lack")
                need = getattr(request.resources, attr)
                out.append(
                    f"{len(short)} {verb} {label} (needs {_num(need)}{unit}, best has {_num(best)})"
                )
        return out


class ConstraintsFilter(BaseFilter):
    """Drops sites failing any of the request's constraints."""

    name = "constraints"

    def __call__(self, site: SiteCandidate, request: PlacementRequest) -> bool:
        return all(c.matches(site) for c in request.parsed_constraints)

    def reason(self, site: SiteCandidate, request: PlacementRequest) -> str:
        for c in request.parsed_constraints:
            if not c.matches(site):
                return f"fails constraint {c}"
        return "meets all constraints"

    def summarize(self, sites: Sequence[SiteCandidate], request: PlacementRequest) -> list[str]:
        first_failed = Counter(self.reason(s, request).removeprefix("fails ") for s in sites)
        return [
            f"{n} {_verb(n, 'fails', 'fail')} {what}"
            for what, n in sorted(first_failed.items(), key=lambda kv: (-kv[1], kv[0]))
        ]


RttEstimator = Callable[[float], float]


def site_rtt_ms(
    site: SiteCandidate, distance_km: float, estimate: RttEstimator = estimate_rtt_ms
) -> float:
    """The estimated RTT to ``site``: the model's, with the site's measured access
    latency in place of the model's fixed access term when the site has one."""
    rtt = estimate(distance_km)
    if site.access_latency_ms is not None:
        rtt += site.access_latency_ms - ACCESS_LATENCY_MS
    return rtt


class LatencyFilter(BaseFilter):
    """Drops sites whose estimated RTT to the client exceeds the request's latency bound.

    Passes every site when the request has no latency bound or no client
    location. A site without a location cannot promise the bound and is dropped.
    ``estimate`` maps great-circle km to RTT ms (default :func:`.geo.estimate_rtt_ms`).
    """

    name = "latency"

    def __init__(self, estimate: RttEstimator = estimate_rtt_ms) -> None:
        self.estimate = estimate

    def rtt_ms(self, site: SiteCandidate, request: PlacementRequest) -> float | None:
        """Estimated RTT in ms, or ``None`` when either location is unknown."""
        client, where = request.client_location, site.location
        if client is None or where is None:
            return None
        return site_rtt_ms(site, great_circle_km(client, where), self.estimate)

    def __call__(self, site: SiteCandidate, request: PlacementRequest) -> bool:
        bound = request.latency_bound_ms
        if bound is None or request.client_location is None:
            return True
        rtt = self.rtt_ms(site, request)
        return rtt is not None and rtt <= bound

    def reason(self, site: SiteCandidate, request: PlacementRequest) -> str:
        rtt = self.rtt_ms(site, request)
        if rtt is None:
            return "has no location to check the latency bound"
        return f"exceeds the {request.latency_bound_ms} ms latency bound (est. {rtt:.1f} ms)"

    def summarize(self, sites: Sequence[SiteCandidate], request: PlacementRequest) -> list[str]:
        rtts = [r for s in sites if (r := self.rtt_ms(s, request)) is not None]
        out = []
        if rtts:
            n = len(rtts)
            out.append(
                f"{n} {_verb(n, 'exceeds', 'exceed')} the {request.latency_bound_ms} ms "
                f"latency bound (best estimate {min(rtts):.1f} ms)"
            )
        if n_unknown := len(sites) - len(rtts):
            out.append(
                f"{n_unknown} {_verb(n_unknown, 'has', 'have')} no location "
                "to check the latency bound"
            )
        return out


#: Registry of the built-in filters, by name.
FILTERS: Mapping[str, Filter] = MappingProxyType(
    {
        f.name: f
        for f in (
            ExcludedFilter(),
            OnlineFilter(),
            CapacityFilter(),
            ConstraintsFilter(),
            LatencyFilter(),
        )
    }
)
