"""Discovery: which cloudlets can serve an app for a client at a spot, best first, and why.

The placement engine filters and weighs the sites (online, capacity, constraints,
the app's latency bound against the estimated RTT) with one more weigher,
``warmth``: the expected time to a first response, from what the site still has
to fetch (its reported cache against the app's base images and overlays) at the
site's measured fetch rate, plus its measured start time (see ``_rates``). Every
fleet-wide read (sites, caches, rates) comes from the fleet snapshot, rebuilt in
the background, so a query reads only the app and the chosen sites' instances.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from cloudlet import placement
from cloudlet.controller.db.models import App, Image, Instance, Overlay
from cloudlet.controller.services._snapshot import FleetSnapshot
from cloudlet.controller.services._snapshot import build as build_snapshot
from cloudlet.placement.engine import evaluate
from cloudlet.placement.filters import FILTERS, site_rtt_ms
from cloudlet.placement.geo import (
    ACCESS_LATENCY_MS,
    EARTH_RADIUS_KM,
    FIBER_KM_PER_MS,
    great_circle_km,
)
from cloudlet.placement.weighers import WEIGHERS
from cloudlet.schemas import ActualState, ComponentKind
from cloudlet.schemas.mobility import Cache, DiscoveredSite, Discovery, RejectedSite

#: Great-circle km per degree of latitude (and of longitude at the equator).
KM_PER_DEGREE = math.pi * EARTH_RADIUS_KM / 180
#: Sites weighed per query: the nearest ones within reach of the latency bound.
NEAREST = 200
#: Rejected sites listed in an answer (a big fleet rejects thousands).
MAX_REJECTED = 50


def _artifacts(session: Session, app: App) -> dict[str, int]:
    """Every artifact (image digest or overlay id) the app's VMs need, with its size."""
    needed: dict[str, int] = {}
    for comp in app.components:
        if comp.get("kind") != ComponentKind.VM.value:
            continue
        if comp.get("image") and (image := session.get(Image, comp["image"])) is not None:
            needed[image.digest] = image.size
        if comp.get("overlay") and (overlay := session.get(Overlay, comp["overlay"])) is not None:
            needed[overlay.id] = overlay.size
            if overlay.memory_base_digest and (
                mem := session.get(Image, overlay.memory_base_digest)
            ):
                needed[mem.digest] = mem.size
    return needed


def _nearest(
    snap: FleetSnapshot, app: App, latitude: float | None, longitude: float | None
) -> list[placement.SiteCandidate]:
    """The sites worth weighing: with a client position, the ``NEAREST`` closest that
    could meet the app's latency bound (at the fastest access latency of any site);
    the others can rank only below them on proximity, or fail the latency filter."""
    if latitude is None or longitude is None or not len(snap):
        return snap.sites()
    lat1, lon1 = math.radians(latitude), math.radians(longitude)
    h = (
        np.sin((snap.latitude - lat1) / 2) ** 2
        + math.cos(lat1) * np.cos(snap.latitude) * np.sin((snap.longitude - lon1) / 2) ** 2
    )
    km = 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(h, 0, 1)))
    km = np.where(np.isnan(km), np.inf, km)
    if app.latency_bound_ms is not None:
        known = snap.access_latency_ms[~np.isnan(snap.access_latency_ms)]
        access = min(ACCESS_LATENCY_MS, float(known.min())) if known.size else ACCESS_LATENCY_MS
        reach = max(0.0, app.latency_bound_ms - access) * FIBER_KM_PER_MS / 2
        km = np.where(km <= reach, km, np.inf)
    count = min(NEAREST, int(np.isfinite(km).sum()))
    order = np.argsort(km, kind="stable")[:count]
    return snap.sites(order)


def _load(site: placement.SiteCandidate) -> float:
    cap, alloc = site.capacity, site.allocated
    fractions = [
        alloc.vcpus / cap.vcpus if cap.vcpus else 1.0,
        alloc.memory_mib / cap.memory_mib if cap.memory_mib else 1.0,
    ]
    if site.utilization is not None:
        util = site.utilization
        fractions = [max(fractions[0], util.cpu), max(fractions[1], util.memory)]
    return round(max(fractions), 4)


def discover(
    session: Session,
    app: App,
    latitude: float | None,
    longitude: float | None,
    grace_s: float,
    *,
    limit: int = 10,
    config: placement.PlacementConfig | None = None,
    snapshot: FleetSnapshot | None = None,
) -> Discovery:
    """Rank the sites that can serve ``app`` for a client at ``(latitude, longitude)``.

    ``snapshot``: a recent fleet snapshot to rank from (default: one built now).
    """
    t0 = time.perf_counter()
    snap = snapshot or build_snapshot(session, grace_s)
    sites = _nearest(snap, app, latitude, longitude)
    beyond = len(snap) - len(sites)
    needed = _artifacts(session, app)
    has_vm = any(c.get("kind") == ComponentKind.VM.value for c in app.components)
    rates = snap.rates[has_vm]
    caches = snap.cached
    missing = {
        s.site_id: sum(size for d, size in needed.items() if d not in caches.get(s.site_id, {}))
        for s in sites
    }
    request = placement.PlacementRequest(
        app=app.name,
        resources=placement.Resources(**app.resources),
        constraints=tuple(app.constraints),
        latency_bound_ms=app.latency_bound_ms,
        client_latitude=latitude,
        client_longitude=longitude,
    )
    client = request.client_location

    def rtt(site: placement.SiteCandidate) -> float | None:
        if client is None or site.location is None:
            return None
        return site_rtt_ms(site, great_circle_km(client, site.location))

    def first_response(site: placement.SiteCandidate) -> float:
        r = rates.get(site.site_id, rates[""])
        return missing[site.site_id] / r.fetch_bps + r.start_s + (rtt(site) or 0.0) / 1000

    base = config or placement.PlacementConfig()
    config = placement.PlacementConfig(
        enabled_filters=base.enabled_filters, weighers={**base.weighers, "warmth": 1.0}
    )
    weighers = {**WEIGHERS, "warmth": _Warmth(first_response)}
    ranked, rejected = evaluate(sites, request, config, filters=FILTERS, weighers=weighers)
    ranked = ranked[:limit]
    chosen = {r.site.site_id for r in ranked}
    endpoints = snap.endpoints
    running: dict[str, list[str]] = defaultdict(list)
    for site_id, endpoint in session.execute(
        select(Instance.site_id, Instance.endpoint).where(
            Instance.app_id == app.id,
            Instance.site_id.in_(chosen),
            Instance.actual_state == ActualState.RUNNING.value,
        )
    ):
        if endpoint:
            running[site_id].append(endpoint)
    out = []
    for i, r in enumerate(ranked, 1):
        s = r.site
        miss = missing[s.site_id]
        cache = Cache.NONE if not needed else Cache.WARM if miss == 0 else Cache.PARTIAL
        if needed and miss == sum(needed.values()):
            cache = Cache.COLD
        out.append(
            DiscoveredSite(
                site=s.name,
                rank=i,
                score=round(r.score, 4),
                distance_km=round(great_circle_km(client, s.location), 2)
                if client and s.location
                else None,
                estimated_rtt_ms=round(v, 2) if (v := rtt(s)) is not None else None,
                access_latency_ms=s.access_latency_ms
                if s.access_latency_ms is not None
                else ACCESS_LATENCY_MS,
                load=_load(s),
                cache=cache,
                missing_bytes=miss,
                expected_first_response_s=round(first_response(s), 3),
                endpoint=endpoints.get(s.site_id),
                running=running.get(s.site_id, []),
                weighers={w.weigher: round(w.raw, 4) for w in r.scores},
            )
        )
    return Discovery(
        app=app.name,
        latitude=latitude,
        longitude=longitude,
        latency_bound_ms=app.latency_bound_ms,
        sites=out,
        rejected=[
            RejectedSite(site=j.site.name, filter=j.filter, reason=j.reason)
            for j in rejected[:MAX_REJECTED]
        ],
        rejected_count=len(rejected) + beyond,
        elapsed_ms=round((time.perf_counter() - t0) * 1000, 2),
    )


class _Warmth:
    """Prefers the site expected to answer first: minus the expected seconds."""

    name = "warmth"

    def __init__(self, first_response: Callable[[placement.SiteCandidate], float]) -> None:
        self._first = first_response

    def __call__(self, site: placement.SiteCandidate, request: placement.PlacementRequest) -> float:
        return -self._first(site)
