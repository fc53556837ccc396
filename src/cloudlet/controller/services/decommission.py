"""Decommissioning: drain a site's instances, then revoke its credential.

``decommission`` turns an active site ``draining``: placement skips it (its state
is unschedulable), nothing new can start there, and each live instance is moved
away by the ``relocate`` hook when one is given (the seam for handoff) or else
stopped and removed, with a ``instance.drained`` event saying so. The site keeps
its credential meanwhile, so its agent can apply the removals and report them.
``finish_drains`` (a controller background task) decommissions every draining
site whose instances are all gone, as the agent's reports show (their tombstones
are purged once reported deleted): only then is the credential revoked.

A site that never enrolled, or a decommission with ``force``, is revoked at once.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from cloudlet.controller.db.models import Instance, JoinToken, Site
from cloudlet.controller.services import alarms, certificates
from cloudlet.controller.services._util import utcnow
from cloudlet.controller.services.fleet import record
from cloudlet.controller.services.instances import delete_instance
from cloudlet.schemas import DesiredState, SiteState

#: Moves one instance off a draining site; True if it did (False: stop it instead).
Relocate = Callable[[Session, Instance], bool]

STOP_NOTE = (
    "site {site} is being decommissioned: instance stopped and removed "
    "(no other site could take it by handoff)"
)


def decommission(
    session: Session, site: Site, *, force: bool = False, relocate: Relocate | None = None
) -> Site:
    """Start draining ``site`` (or, when it never enrolled or ``force``, finish at once).

    Returns:
        The site, ``draining`` or ``decommissioned``. Asking again is harmless, and
        ``force`` finishes a drain under way (its agent may never report back).
    """
    if site.state == SiteState.DECOMMISSIONED.value:
        return site
    live = session.scalars(
        select(Instance).where(
            Instance.site_id == site.id, Instance.desired_state != DesiredState.DELETED.value
        )
    ).all()
    stopped = 0
    for instance in live:
        if relocate is not None and relocate(session, instance):
            record(session, "instance.relocated", site.id, instance=instance.id)
            continue
        delete_instance(session, instance)
        note = STOP_NOTE.format(site=site.name)
        instance.reason = note
        record(session, "instance.drained", site.id, instance=instance.id, note=note)
        stopped += 1
    if site.decommission_requested_at is None:
        site.decommission_requested_at = utcnow()
    if site.state != SiteState.DRAINING.value:
        site.state = SiteState.DRAINING.value
        record(session, "site.draining", site.id, instances=len(live), stopped=stopped)
    if force or site.credential_hash is None or not _remaining(session, site.id):
        _revoke(session, site, forced=force)
    return site


def _remaining(session: Session, site_id: str) -> int:
    """Instance rows left at the site, tombstones included (the agent has not yet
    reported those deletions)."""
    return session.scalar(
        select(func.count()).select_from(Instance).where(Instance.site_id == site_id)
    )


def _revoke(session: Session, site: Site, *, forced: bool) -> None:
    site.state = SiteState.DECOMMISSIONED.value
    site.credential_hash = None
    certificates.revoke_site(session, site.id)
    session.execute(update(JoinToken).where(JoinToken.site_id == site.id).values(used_at=utcnow()))
    record(session, "site.decommissioned", site.id, forced=forced)
    # A decommissioned site is silent for good: what it was alarmed for is over.
    alarms.clear_site(session, site)


def finish_drains(session: Session) -> list[str]:
    """Decommission every site being decommissioned with no instance left (a drain for
    maintenance keeps its site); returns their ids."""
    done = []
    draining = select(Site).where(
        Site.state == SiteState.DRAINING.value, Site.decommission_requested_at.is_not(None)
    )
    for site in session.scalars(draining):
        if not _remaining(session, site.id):
            _revoke(session, site, forced=False)
            done.append(site.id)
    return done
