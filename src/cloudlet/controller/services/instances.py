"""Instances: create (placing them when no site is named), list, lifecycle actions, delete.

Every change to an instance's desired state bumps its site's revision and stamps
the instance with it, which is what makes desired-state deltas possible.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Row, func, select, update
from sqlalchemy.orm import Session

from cloudlet import placement
from cloudlet.controller.db.dialect import announce_revision
from cloudlet.controller.db.models import App, Instance, Site
from cloudlet.controller.services import _paging as paging
from cloudlet.controller.services import quotas
from cloudlet.controller.services._util import new_id, utcnow
from cloudlet.controller.services.fleet import availability_since, get_site, record
from cloudlet.errors import ConflictError, NotFoundError
from cloudlet.schemas import (
    DEFAULT_PROJECT,
    ActualState,
    Availability,
    ComponentKind,
    DesiredState,
    InstanceAction,
    InstanceCreate,
    InstanceOrigin,
    SiteState,
)


def bump_revision(session: Session, site_id: str) -> int:
    """Advance a site's desired-state revision atomically and return the new one."""
    revision = session.execute(
        update(Site)
        .where(Site.id == site_id)
        .values(revision=Site.revision + 1, revision_changed_at=utcnow())
        .returning(Site.revision)
    ).scalar_one()
    announce_revision(session, site_id)
    return revision


def get_instance(session: Session, project: str | None, ref: str) -> Instance | None:
    """By id or by name within the project. With no project (an admin's request), by id
    in any project, or by name in the admin project: names are unique only per project."""
    if project is None:
        by_id = session.get(Instance, ref)
        return by_id if by_id is not None else get_instance(session, DEFAULT_PROJECT, ref)
    return session.scalar(
        select(Instance).where(
            Instance.project == project, (Instance.id == ref) | (Instance.name == ref)
        )
    )


#: The order instances are listed in; unique, so it can be paged by key.
LIST_ORDER = (Instance.created_at, Instance.name, Instance.id)


def list_instances(
    session: Session,
    project: str | None,
    site_id: str | None = None,
    *,
    after: tuple[datetime, str, str] | None = None,
    limit: int | None = None,
) -> list[Instance]:
    """Oldest first (then by name and id), the first ``limit`` after the key ``after``
    (``(created_at, name, id)`` of the last row of the page before)."""
    query = select(Instance).order_by(*LIST_ORDER)
    if project is not None:
        query = query.where(Instance.project == project)
    if site_id is not None:
        query = query.where(Instance.site_id == site_id)
    if after is not None:
        query = query.where(paging.after(LIST_ORDER, after))
    if limit is not None:
        query = query.limit(limit)
    return list(session.scalars(query))


def _allocated(session: Session) -> dict[str, placement.Resources]:
    """What live instances consume per site, from the apps' declared resources."""
    rows = session.connection().execute(
        select(Instance.site_id, App.resources)
        .join(App, App.id == Instance.app_id)
        .where(Instance.desired_state != DesiredState.DELETED.value)
    )
    totals: dict[str, placement.Resources] = {}
    for site_id, res in rows:
        prev = totals.get(site_id, placement.Resources())
        totals[site_id] = placement.Resources(
            vcpus=prev.vcpus + res["vcpus"],
            memory_mib=prev.memory_mib + res["memory_mib"],
            disk_gib=prev.disk_gib + res["disk_gib"],
        )
    return totals


#: What placement reads of a site, each column named for :class:`SiteRows`' rows.
_CAP, _UTIL = Site.capacity, Site.utilization
_CANDIDATE_COLUMNS = (
    Site.id, Site.name, Site.state, Site.region, Site.latitude, Site.longitude, Site.labels,
    Site.last_seen, Site.access_latency_ms, Site.local_api_url,
    _CAP["vcpus"].as_float().label("vcpus"),
    _CAP["memory_mib"].as_integer().label("memory_mib"),
    _CAP["disk_gib"].as_float().label("disk_gib"),
    _UTIL["cpu"].as_float().label("cpu"),
    _UTIL["memory"].as_float().label("memory"),
    _UTIL["disk"].as_float().label("disk"),
)  # fmt: skip


@dataclass(frozen=True)
class SiteRows:
    """Every site that has an agent, as plain rows: a :class:`placement.SiteCandidate`
    is made only for the sites a caller looks at (discovery weighs the nearest few
    hundred of 10,000). Columns, not ORM objects, with the capacity and utilization
    numbers taken out of their JSON by the database."""

    rows: list[Row[Any]]
    allocated: dict[str, placement.Resources]
    now: datetime
    grace_s: float

    def candidate(self, i: int) -> placement.SiteCandidate:
        r = self.rows[i]
        used = (r.cpu, r.memory, r.disk)
        return placement.SiteCandidate(
            site_id=r.id,
            name=r.name,
            capacity=placement.Resources(r.vcpus or 0, r.memory_mib or 0, r.disk_gib or 0),
            online=availability_since(r.last_seen, self.now, self.grace_s) is Availability.ONLINE,
            state="online" if r.state == SiteState.ACTIVE.value else r.state,
            region=r.region,
            latitude=r.latitude,
            longitude=r.longitude,
            labels=dict(r.labels) if r.labels else {},
            allocated=self.allocated.get(r.id, placement.Resources()),
            utilization=None
            if used == (None, None, None)
            else placement.Utilization(*(u or 0.0 for u in used)),
            access_latency_ms=r.access_latency_ms,
        )


def site_rows(session: Session, grace_s: float) -> SiteRows:
    # Core rows: the ORM's result processing would cost as much again.
    rows = (
        session.connection()
        .execute(select(*_CANDIDATE_COLUMNS).where(Site.state != SiteState.REGISTERED.value))
        .all()
    )
    return SiteRows(list(rows), _allocated(session), utcnow(), grace_s)


def candidates(session: Session, grace_s: float) -> list[placement.SiteCandidate]:
    """A placement snapshot of every site that has an agent."""
    found = site_rows(session, grace_s)
    return [found.candidate(i) for i in range(len(found.rows))]


def create_instance(
    session: Session,
    project: str,
    body: InstanceCreate,
    grace_s: float,
    config: placement.PlacementConfig | None = None,
) -> tuple[Instance, dict[str, object] | None]:
    """Create an instance, placing it when no site is named.

    Returns the instance and, when placement chose the site, its explanation.

    Raises:
        NotFoundError: unknown app or site.
        ConflictError: the site cannot take instances, or the name is taken.
        PlacementError: no site fits.
        QuotaExceededError: the project's quota has no room for it (the project stays
            locked until the caller's transaction ends: insert, then commit).
    """
    app = session.scalar(select(App).where(App.project == project, App.name == body.app))
    if app is None:
        raise NotFoundError(f"app {body.app!r} not found in project {project!r}")
    quotas.check_instance(session, project, app.resources)
    explanation = None
    if body.site is not None:
        site = get_site(session, body.site)
        if site is None:
            raise NotFoundError(f"site {body.site!r} not found")
        if site.state in (SiteState.DRAINING.value, SiteState.DECOMMISSIONED.value):
            raise ConflictError(f"site {site.name!r} is {site.state}")
    else:
        request = placement.PlacementRequest(
            app=app.name,
            resources=placement.Resources(**app.resources),
            constraints=tuple(app.constraints),
            latency_bound_ms=app.latency_bound_ms,
            client_latitude=body.client_latitude,
            client_longitude=body.client_longitude,
        )
        decision = placement.place(candidates(session, grace_s), request, config)
        site = session.get_one(Site, decision.site.site_id)
        explanation = decision.as_dict()
    name = body.name or f"{app.name}-{secrets.token_hex(3)}"
    if get_instance(session, project, name) is not None:
        raise ConflictError(f"instance {name!r} exists already")
    now = utcnow()
    instance = Instance(
        id=new_id(),
        project=project,
        name=name,
        app_id=app.id,
        app_version=app.version,
        site_id=site.id,
        origin=InstanceOrigin.CONTROLLER.value,
        desired_state=DesiredState.RUNNING.value,
        revision=bump_revision(session, site.id),
        actual_state=ActualState.PENDING.value,
        endpoint=None,
        reason=None,
        timings={},
        actual_updated_at=None,
        restarts=0,
        crash_restarts=0,
        usage_since=None,
        created_at=now,
        updated_at=now,
        client_latitude=body.client_latitude,
        client_longitude=body.client_longitude,
        follow_client=body.follow_client,
        placement=explanation,
    )
    session.add(instance)
    record(session, "instance.created", site.id, instance=instance.id, app=app.name)
    return instance, explanation


def act(session: Session, instance: Instance, action: InstanceAction) -> Instance:
    """Ask the instance's site to stop, start, suspend, resume or restart it.

    The site's agent applies it from its desired state (at once if connected, else
    when its link returns). Asking for the state it is already in changes nothing,
    except restart, which always restarts.

    Raises:
        ConflictError: the instance is being deleted, its site is draining, suspend
            of an instance with a process component (only VMs keep their memory and
            device state), or resume of an instance that is not suspended.
    """
    name = f"instance {instance.name!r}"
    if instance.desired_state == DesiredState.DELETED.value:
        raise ConflictError(f"{name} is being deleted")
    current = DesiredState(instance.desired_state)
    if action is InstanceAction.STOP:
        wanted = DesiredState.STOPPED
    elif action is InstanceAction.SUSPEND:
        app = session.get_one(App, instance.app_id)
        procs = [
            c["name"] for c in app.components if c.get("kind", "process") != ComponentKind.VM.value
        ]
        if procs:
            raise ConflictError(
                f"{name} cannot be suspended: its component(s) {', '.join(procs)} run as "
                "processes, and only VM components keep their memory and device state; "
                "stop it instead"
            )
        if current is DesiredState.STOPPED:
            raise ConflictError(f"{name} is stopped: start it before suspending it")
        wanted = DesiredState.SUSPENDED
    elif action is InstanceAction.RESUME:
        if current is DesiredState.STOPPED:
            raise ConflictError(f"{name} is stopped, not suspended: start it instead")
        wanted = DesiredState.RUNNING
    else:
        wanted = DesiredState.RUNNING
    if wanted is DesiredState.RUNNING:
        site = session.get_one(Site, instance.site_id)
        if site.state in (SiteState.DRAINING.value, SiteState.DECOMMISSIONED.value):
            raise ConflictError(f"{name} cannot run: site {site.name!r} is {site.state}")
    restart = action is InstanceAction.RESTART
    if wanted is current and not restart:
        return instance
    instance.desired_state = wanted.value
    if restart:
        instance.restarts += 1
    instance.revision = bump_revision(session, instance.site_id)
    instance.updated_at = utcnow()
    record(session, f"instance.{action.value}", instance.site_id, instance=instance.id)
    return instance


def delete_instance(session: Session, instance: Instance) -> Instance:
    """Mark an instance deleted; the row stays as a tombstone until its site has
    applied the deletion, so deltas can carry it."""
    if instance.desired_state == DesiredState.DELETED.value:
        return instance
    instance.desired_state = DesiredState.DELETED.value
    instance.revision = bump_revision(session, instance.site_id)
    instance.updated_at = utcnow()
    return instance


def live_instance_count(session: Session, app_id: str) -> int:
    return session.scalar(
        select(func.count())
        .select_from(Instance)
        .where(Instance.app_id == app_id, Instance.desired_state != DesiredState.DELETED.value)
    )


def purge_tombstones(session: Session, where: object) -> int:
    """Delete tombstoned instances matching ``where``; raise each site's tombstone
    floor so an agent whose cursor predates a purged deletion gets a snapshot."""
    rows = session.execute(
        select(Instance.site_id, func.max(Instance.revision), func.count())
        .where(Instance.desired_state == DesiredState.DELETED.value, where)
        .group_by(Instance.site_id)
    ).all()
    for site_id, max_rev, _count in rows:
        session.execute(
            update(Site)
            .where(Site.id == site_id, Site.tombstone_floor < max_rev)
            .values(tombstone_floor=max_rev)
        )
    if rows:
        session.execute(
            Instance.__table__.delete().where(
                Instance.desired_state == DesiredState.DELETED.value, where
            )
        )
    return sum(count for *_, count in rows)
