"""Sites and their lifecycle: create, join tokens, enrollment, decommission, views."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, func, insert, select, update
from sqlalchemy.exc import IntegrityError as DBIntegrityError
from sqlalchemy.orm import Session

from cloudlet.controller.db.models import ControllerEvent, Instance, JoinToken, Site
from cloudlet.controller.services._util import hash_secret, new_id, new_secret, utcnow
from cloudlet.errors import AuthError, ConflictError, TokenExpiredError
from cloudlet.schemas import (
    Availability,
    DesiredState,
    EnrollRequest,
    EnrollResponse,
    SiteCreate,
    SiteState,
    SiteUpdate,
    SyncStatus,
)
from cloudlet.schemas import JoinToken as JoinTokenOut
from cloudlet.schemas import Resources as ResourcesOut
from cloudlet.schemas import Site as SiteOut
from cloudlet.schemas import Utilization as UtilizationOut


def record(session: Session, kind: str, site_id: str | None, **data: object) -> None:
    session.add(ControllerEvent(site_id=site_id, kind=kind, at=utcnow(), data=data))


def record_many(session: Session, kind: str, site_ids: list[str]) -> None:
    """One event of ``kind`` per site, in one statement (a liveness pass may judge
    thousands of sites at once)."""
    if site_ids:
        now = utcnow()
        rows = [{"site_id": i, "kind": kind, "at": now, "data": {}} for i in site_ids]
        session.execute(insert(ControllerEvent), rows)


def get_site(session: Session, name: str) -> Site | None:
    return session.scalar(select(Site).where(Site.name == name))


def site_names(session: Session, site_ids: set[str]) -> dict[str, str]:
    """Names of just these sites, by id (not the whole fleet's)."""
    rows = session.execute(select(Site.id, Site.name).where(Site.id.in_(site_ids)))
    return dict(rows.all())


def list_sites(
    session: Session,
    *,
    region: str | None = None,
    availability: Availability | None = None,
    labels: dict[str, str] | None = None,
    now: datetime | None = None,
    grace_s: float = 0.0,
    after: str | None = None,
    limit: int | None = None,
) -> list[Site]:
    """Sites by name, filtered in the database, the first ``limit`` after the name ``after``.

    ``availability`` is worked out as :func:`availability_since` does, from
    ``last_seen`` against ``now`` minus ``grace_s``; ``labels`` must all match.
    """
    query = select(Site).order_by(Site.name)
    if region is not None:
        query = query.where(Site.region == region)
    if availability is not None:
        query = query.where(_availability_is(availability, now or utcnow(), grace_s))
    for key, value in (labels or {}).items():
        query = query.where(Site.labels[key].as_string() == value)
    if after is not None:
        query = query.where(Site.name > after)
    if limit is not None:
        query = query.limit(limit)
    return list(session.scalars(query))


def _availability_is(wanted: Availability, now: datetime, grace_s: float) -> ColumnElement[bool]:
    """:func:`availability_since` as SQL: online when heard from within the grace."""
    if wanted is Availability.UNKNOWN:
        return Site.last_seen.is_(None)
    cutoff = now - timedelta(seconds=grace_s)
    return Site.last_seen >= cutoff if wanted is Availability.ONLINE else Site.last_seen < cutoff


def create_site(session: Session, body: SiteCreate) -> tuple[Site, JoinTokenOut]:
    """Register a site and create its first join token.

    Raises:
        ConflictError: a site with that name exists.
    """
    now = utcnow()
    site = Site(
        id=new_id(),
        name=body.name,
        region=body.region,
        latitude=body.latitude,
        longitude=body.longitude,
        labels=dict(body.labels),
        state=SiteState.REGISTERED.value,
        # Revision 1, not 0: an agent's first pull (since=0) then moves its cursor
        # even when there is nothing to run, and it long-polls from there instead
        # of asking for a snapshot again and again.
        revision=1,
        revision_changed_at=now,
        tombstone_floor=0,
        applied_revision=0,
        acked_seq=0,
        availability=Availability.UNKNOWN.value,
        bytes_in=0,
        bytes_out=0,
        created_at=now,
    )
    session.add(site)
    try:
        session.flush()
    except DBIntegrityError as exc:
        raise ConflictError(f"site {body.name!r} exists already") from exc
    token = create_join_token(session, site, body.join_token_ttl_s)
    record(session, "site.registered", site.id, name=site.name)
    return site, token


def update_site(session: Session, site: Site, body: SiteUpdate) -> Site:
    for field, value in body.model_dump(exclude_unset=True).items():
        setattr(site, field, value)
    return site


def create_join_token(session: Session, site: Site, ttl_s: int) -> JoinTokenOut:
    if site.state == SiteState.DECOMMISSIONED.value:
        raise ConflictError(f"site {site.name!r} is decommissioned")
    secret = new_secret("join")
    expires = utcnow() + timedelta(seconds=ttl_s)
    session.add(
        JoinToken(
            token_hash=hash_secret(secret),
            site_id=site.id,
            expires_at=expires,
            used_at=None,
            created_at=utcnow(),
        )
    )
    return JoinTokenOut(site=site.name, token=secret, expires_at=expires)


def enroll(session: Session, body: EnrollRequest) -> EnrollResponse:
    """Trade a one-time join token for the site's long-lived credential.

    The token is marked used with a conditional UPDATE, so two agents racing
    with the same token cannot both win.

    Raises:
        AuthError: unknown or used token, or a decommissioned site.
        TokenExpiredError: the token expired.
    """
    token_hash = hash_secret(body.join_token)
    token = session.get(JoinToken, token_hash)
    if token is None:
        raise AuthError("unknown join token")
    if token.used_at is not None:
        raise AuthError("join token already used")
    now = utcnow()
    if token.expires_at <= now:
        raise TokenExpiredError("join token expired; create a new one with `cloudlet site token`")
    won = session.execute(
        update(JoinToken)
        .where(JoinToken.token_hash == token_hash, JoinToken.used_at.is_(None))
        .values(used_at=now)
    ).rowcount
    if won != 1:
        raise AuthError("join token already used")
    site = session.get(Site, token.site_id)
    if site is None or site.state == SiteState.DECOMMISSIONED.value:
        raise AuthError("site is decommissioned")
    credential = new_secret("site")
    site.credential_hash = hash_secret(credential)
    if site.state == SiteState.REGISTERED.value:
        site.state = SiteState.ACTIVE.value
    site.agent_version = body.agent_version
    if body.capacity is not None:
        site.capacity = body.capacity.model_dump()
    site.last_seen = now
    if site.availability != Availability.ONLINE.value:
        site.availability = Availability.ONLINE.value
        site.availability_changed_at = now
    record(session, "site.enrolled", site.id, agent_version=body.agent_version)
    return EnrollResponse(
        site_id=site.id, site_name=site.name, credential=credential, revision=site.revision
    )


def availability(site: Site, now: datetime, grace_s: float) -> Availability:
    """Online while the agent was heard from within the grace period."""
    return availability_since(site.last_seen, now, grace_s)


def availability_since(last_seen: datetime | None, now: datetime, grace_s: float) -> Availability:
    """:func:`availability` of a site last heard from at ``last_seen``."""
    if last_seen is None:
        return Availability.UNKNOWN
    if (now - last_seen).total_seconds() <= grace_s:
        return Availability.ONLINE
    return Availability.OFFLINE


def sync_status(site: Site, avail: Availability) -> SyncStatus:
    if site.applied_revision >= site.revision:
        return SyncStatus.IN_SYNC
    return SyncStatus.SYNCING if avail is Availability.ONLINE else SyncStatus.OUT_OF_SYNC


def instance_counts(
    session: Session,
    project: str | None = None,
    site_id: str | None = None,
    site_ids: set[str] | None = None,
) -> dict[str, int]:
    """Live instances per site, of one project (None: all) and one site or a set of
    sites (None: all)."""
    query = select(Instance.site_id, func.count()).where(
        Instance.desired_state != DesiredState.DELETED.value
    )
    if project is not None:
        query = query.where(Instance.project == project)
    if site_id is not None:
        query = query.where(Instance.site_id == site_id)
    if site_ids is not None:
        query = query.where(Instance.site_id.in_(site_ids))
    rows = session.execute(query.group_by(Instance.site_id))
    return {site_id: count for site_id, count in rows}


def site_view(site: Site, now: datetime, grace_s: float, instances: int = 0) -> SiteOut:
    avail = availability(site, now, grace_s)
    if site.state in (SiteState.REGISTERED.value, SiteState.DECOMMISSIONED.value):
        avail = Availability.UNKNOWN if site.last_seen is None else avail
    return SiteOut(
        id=site.id,
        name=site.name,
        region=site.region,
        latitude=site.latitude,
        longitude=site.longitude,
        labels=site.labels,
        state=SiteState(site.state),
        availability=avail,
        last_seen=site.last_seen,
        revision=site.revision,
        applied_revision=site.applied_revision,
        revision_lag=max(0, site.revision - site.applied_revision),
        sync_status=sync_status(site, avail),
        bytes_in=site.bytes_in,
        bytes_out=site.bytes_out,
        capacity=ResourcesOut.model_validate(site.capacity) if site.capacity else None,
        utilization=UtilizationOut.model_validate(site.utilization) if site.utilization else None,
        instances=instances,
        agent_version=site.agent_version,
        agent_target=site.agent_target,
        created_at=site.created_at,
        access_latency_ms=site.access_latency_ms,
        local_api=site.local_api_url,
    )
