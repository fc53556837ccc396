"""The relocation loop's decisions: *when* an instance moves (placement decides where).

One pass, run every ``mobility.interval_s`` seconds by the controller:

- handoffs whose source sent no state within ``handoff_timeout_s`` are given up;
- **failover**: instances of relocatable apps whose site has been silent for longer
  than the app's ``failover_after_s`` are restarted elsewhere (no state moves);
- **drain**: instances at a draining site are handed off to the best other site;
- **follow the client**: an instance tied to its client moves when the estimated
  RTT from the client to its site exceeds the app's bound and another site is
  better by ``follow_margin_ms``;
- **rebalance** (only with ``rebalance`` on): a site above ``overload`` CPU or
  memory for ``overload_for_s`` sheds one instance at a time (none while a move
  away from it is open) to a site that meets its latency bound.

Hysteresis: no automatic move of an instance within ``min_dwell_s`` of its last
one (failover excepted: a dead site is not a preference), the follow margin, and
the overload duration.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from cloudlet import placement
from cloudlet.controller.db.models import App, Instance, Site
from cloudlet.controller.services import mobility
from cloudlet.controller.services._util import utcnow
from cloudlet.controller.services.fleet import availability
from cloudlet.errors import CloudletError
from cloudlet.placement.filters import site_rtt_ms
from cloudlet.placement.geo import great_circle_km
from cloudlet.schemas import Availability, DesiredState, SiteState
from cloudlet.settings import MobilitySettings

log = logging.getLogger(__name__)


@dataclass
class RelocationMemory:
    """What passes remember between them: since when each site has been overloaded."""

    overloaded_since: dict[str, datetime] = field(default_factory=dict)


@dataclass
class PassResult:
    """Sites whose desired state changed (to wake their long polls) and what moved."""

    sites: set[str] = field(default_factory=set)
    moves: list[tuple[str, str]] = field(default_factory=list)  # (instance id, why)


def _live(session: Session, *where: object) -> list[tuple[Instance, App, Site]]:
    rows = session.execute(
        select(Instance, App, Site)
        .join(App, App.id == Instance.app_id)
        .join(Site, Site.id == Instance.site_id)
        .where(Instance.desired_state != DesiredState.DELETED.value, *where)
    ).all()
    return [(i, a, s) for i, a, s in rows if mobility.open_handoff(session, i.id) is None]


def _dwelt(instance: Instance, now: datetime, min_dwell_s: float) -> bool:
    return instance.moved_at is None or (now - instance.moved_at).total_seconds() >= min_dwell_s


def _rtt(site: Site, instance: Instance) -> float | None:
    if None in (site.latitude, site.longitude, instance.client_latitude, instance.client_longitude):
        return None
    km = great_circle_km(
        (instance.client_latitude, instance.client_longitude),  # type: ignore[arg-type]
        (site.latitude, site.longitude),  # type: ignore[arg-type]
    )
    candidate = placement.SiteCandidate(
        site_id=site.id,
        name=site.name,
        capacity=placement.Resources(),
        access_latency_ms=site.access_latency_ms,
    )
    return site_rtt_ms(candidate, km)


def _move(
    session: Session,
    result: PassResult,
    instance: Instance,
    decision: placement.PlacementDecision,
    why: str,
    *,
    with_state: bool,
    relay: str | None = None,
) -> None:
    dest = session.get_one(Site, decision.site.site_id)
    source = instance.site_id
    explanation = {**decision.as_dict(), "why": why}
    if with_state:
        mobility.request_move(session, instance, dest, why, explanation, relay=relay)
    else:
        mobility.relocate(session, instance, dest, why, explanation)
    result.sites |= {source, dest.id}
    result.moves.append((instance.id, why))
    log.info("instance %s: %s -> %s (%s)", instance.name, source, dest.name, why)


def decommission_relocator(
    site: Site, grace_s: float, relay: str | None = None
) -> Callable[[Session, Instance], bool]:
    """The decommission's ``relocate`` hook: hand an instance of ``site`` off to the best
    other site, True if a handoff started (False: none fits, or the site is not
    online to send its state, and the decommission stops the instance instead)."""
    online = availability(site, utcnow(), grace_s) is Availability.ONLINE

    def relocate(session: Session, instance: Instance) -> bool:
        if not online:
            return False
        try:
            decision = mobility.choose_site(session, instance, grace_s, exclude=set())
            why = f"decommission of {site.name}"
            _move(session, PassResult(), instance, decision, why, with_state=True, relay=relay)
        except CloudletError as exc:
            log.info("instance %s cannot leave %s by handoff: %s", instance.name, site.name, exc)
            return False
        return True

    return relocate


def relocation_pass(
    session: Session,
    grace_s: float,
    settings: MobilitySettings,
    memory: RelocationMemory,
    relay: str | None = None,
) -> PassResult:
    """Decide and start this pass's moves (the caller commits); VM handoffs name
    ``relay`` (this replica's relay) for their sites to meet at if need be."""
    now = utcnow()
    result = PassResult()
    for handoff in mobility.timed_out(session, settings.handoff_timeout_s):
        mobility.fail_handoff(session, handoff, "timed out before the destination took over")
        result.sites |= {handoff.source_site_id, handoff.dest_site_id}

    for instance, app, site in _live(session, App.relocatable.is_(True)):
        if app.failover_after_s is None or site.last_seen is None:
            continue
        silent = (now - site.last_seen).total_seconds()
        if silent <= app.failover_after_s:
            continue
        try:
            decision = mobility.choose_site(session, instance, grace_s, exclude=set())
        except CloudletError as exc:
            log.info("instance %s cannot fail over yet: %s", instance.name, exc)
            continue
        why = f"failover: site {site.name} silent for {silent:.0f}s"
        _move(session, result, instance, decision, why, with_state=False)

    for instance, _app, site in _live(session, Site.state == SiteState.DRAINING.value):
        if availability(site, now, grace_s) is not Availability.ONLINE:
            continue  # a handoff needs the source; failover handles dead sites
        try:
            decision = mobility.choose_site(session, instance, grace_s, exclude=set())
        except CloudletError as exc:
            log.info("instance %s cannot leave draining %s: %s", instance.name, site.name, exc)
            continue
        why = f"drain of {site.name}"
        _move(session, result, instance, decision, why, with_state=True, relay=relay)

    for instance, app, site in _live(session, Instance.follow_client.is_(True)):
        bound = app.latency_bound_ms
        rtt = _rtt(site, instance)
        if bound is None or rtt is None or rtt <= bound:
            continue
        if not _dwelt(instance, now, settings.min_dwell_s):
            continue
        if availability(site, now, grace_s) is not Availability.ONLINE:
            continue
        try:
            decision = mobility.choose_site(session, instance, grace_s, exclude=set())
        except CloudletError:
            continue  # nowhere better within the bound: stay
        best = _rtt(session.get_one(Site, decision.site.site_id), instance)
        if best is None or best + settings.follow_margin_ms > rtt:
            continue
        why = f"client moved: est. {rtt:.1f} ms > {bound} ms bound here, {best:.1f} ms there"
        _move(session, result, instance, decision, why, with_state=True, relay=relay)

    if settings.rebalance:
        _rebalance(session, grace_s, settings, memory, now, result, relay)
    return result


def _rebalance(
    session: Session,
    grace_s: float,
    settings: MobilitySettings,
    memory: RelocationMemory,
    now: datetime,
    result: PassResult,
    relay: str | None,
) -> None:
    hot: set[str] = set()
    for site in session.scalars(select(Site).where(Site.state == SiteState.ACTIVE.value)):
        util = site.utilization or {}
        over = max(util.get("cpu", 0.0), util.get("memory", 0.0)) > settings.overload
        if over and availability(site, now, grace_s) is Availability.ONLINE:
            since = memory.overloaded_since.setdefault(site.id, now)
            if now - since >= timedelta(seconds=settings.overload_for_s):
                hot.add(site.id)
        else:
            memory.overloaded_since.pop(site.id, None)
    for site_id in hot:
        if mobility.moving_from(session, site_id):
            continue  # a shed is under way: let it show in the site's next reports
        movable = [
            i
            for i, a, _s in _live(session, Instance.site_id == site_id)
            if i.id not in {m for m, _ in result.moves}
            and _dwelt(i, now, settings.min_dwell_s)
            and len(a.components) == 1
        ]
        for instance in sorted(movable, key=lambda i: i.created_at, reverse=True):
            try:
                decision = mobility.choose_site(session, instance, grace_s, exclude=hot)
            except CloudletError:
                continue
            why = "rebalance: site overloaded"
            _move(session, result, instance, decision, why, with_state=True, relay=relay)
            memory.overloaded_since[site_id] = now  # give the move time to show
            break
