"""Decommissioning: drain a site's instances, then revoke its credentials."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from cloudlet.controller.db.models import Instance, JoinToken, Site
from cloudlet.controller.services._util import utcnow
from cloudlet.controller.services.fleet import record
from cloudlet.controller.services.instances import delete_instance
from cloudlet.schemas import DesiredState, SiteState


def decommission(session: Session, site: Site) -> Site:
    """Drain a site: its live instances are deleted (relocation comes later) and
    its credential revoked, so the agent stops syncing.

    Returns the site in ``decommissioned`` state.
    """
    live = session.scalars(
        select(Instance).where(
            Instance.site_id == site.id, Instance.desired_state != DesiredState.DELETED.value
        )
    ).all()
    for instance in live:
        delete_instance(session, instance)
    site.state = SiteState.DECOMMISSIONED.value
    site.credential_hash = None
    session.execute(update(JoinToken).where(JoinToken.site_id == site.id).values(used_at=utcnow()))
    record(session, "site.decommissioned", site.id, instances=len(live))
    return site
