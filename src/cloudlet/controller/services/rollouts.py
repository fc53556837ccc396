"""Rollouts: an app's instances, or many sites' agents, moved to a new version in waves.

A rollout is planned once, at its start: each item (an instance, or a site) gets a
wave. A pass (``advance``, run by a background loop) tells the items of the current
wave to move, then waits until each is healthy at the new version:

- an instance: its site applied the change and it reads ``running``, which the agent
  says only once every workload that binds a port accepts connections;
- a site's agent: the new agent says it committed the upgrade (its
  ``agent.upgrade`` event with phase ``upgraded``).

An item that fails (``failed`` at its site, an ``agent.upgrade`` failure, or not
healthy within ``health_timeout_s``) stops the rollout: its whole wave is moved back
to the versions it had, and the later waves are not touched. Each pass is one
transaction that locks the rollouts it advances (``SKIP LOCKED`` on PostgreSQL), so
two replicas never advance the same rollout at once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError as DBIntegrityError
from sqlalchemy.orm import Session

from cloudlet.controller.db.models import (
    App,
    AppVersion,
    Event,
    Instance,
    Rollout,
    RolloutItem,
    Site,
)
from cloudlet.controller.services import agent_packages
from cloudlet.controller.services._util import new_id, utcnow
from cloudlet.controller.services.fleet import availability, record
from cloudlet.controller.services.instances import bump_revision
from cloudlet.errors import ConflictError, InvalidInputError
from cloudlet.schemas import (
    ActualState,
    Availability,
    DesiredState,
    EventKind,
    InstanceOrigin,
    SiteState,
)
from cloudlet.schemas.rollouts import (
    ItemState,
    RolloutKind,
    RolloutOptions,
    RolloutState,
    RolloutStrategy,
)
from cloudlet.schemas.rollouts import Rollout as RolloutOut
from cloudlet.schemas.rollouts import RolloutItem as RolloutItemOut

#: Default health timeouts: an app restarts in seconds; an agent fetches a wheel,
#: installs it and restarts.
DEFAULT_TIMEOUT_S = {RolloutKind.APP: 60.0, RolloutKind.AGENT: 300.0}
_DONE = frozenset({ItemState.HEALTHY.value, ItemState.SKIPPED.value})
_MOVED = frozenset({ItemState.UPDATING.value, ItemState.HEALTHY.value, ItemState.FAILED.value})


def wave_sizes(count: int, options: RolloutOptions) -> list[int]:
    """How many items each wave holds: the canary first, then one (serial) or
    ``max_parallel`` (parallel) at a time."""
    sizes: list[int] = []
    left = count
    if options.canary and left:
        sizes.append(min(options.canary, left))
        left -= sizes[0]
    step = 1 if options.strategy is RolloutStrategy.SERIAL else options.max_parallel
    while left > 0:
        sizes.append(min(step, left))
        left -= sizes[-1]
    return sizes


def _waves(count: int, options: RolloutOptions) -> list[int]:
    """The wave of each of ``count`` items, in order."""
    return [wave for wave, size in enumerate(wave_sizes(count, options)) for _ in range(size)]


@dataclass(frozen=True)
class Planned:
    """One item of a rollout about to be created."""

    entity_id: str
    site_id: str
    from_version: str | None
    skip: str | None = None  # why it is left out, if it is


def _create(
    session: Session,
    kind: RolloutKind,
    project: str,
    to_version: str,
    options: RolloutOptions,
    planned: list[Planned],
    app_id: str | None = None,
    from_version: str | None = None,
) -> Rollout:
    now = utcnow()
    rollout = Rollout(
        id=new_id(),
        kind=kind.value,
        app_id=app_id,
        project=project,
        from_version=from_version,
        to_version=to_version,
        strategy=options.strategy.value,
        max_parallel=options.max_parallel,
        canary=options.canary,
        health_timeout_s=options.health_timeout_s or DEFAULT_TIMEOUT_S[kind],
        state=RolloutState.RUNNING.value,
        wave=0,
        reason=None,
        created_at=now,
        updated_at=now,
        finished_at=None,
    )
    session.add(rollout)
    try:
        session.flush()  # ux_rollouts_running: two rollouts started at once, one wins
    except DBIntegrityError as exc:
        raise ConflictError("another rollout of the same target started meanwhile") from exc
    moving = [p for p in planned if p.skip is None]
    waves = iter(_waves(len(moving), options))
    for position, p in enumerate(planned):
        session.add(
            RolloutItem(
                rollout_id=rollout.id,
                entity_id=p.entity_id,
                position=position,
                wave=-1 if p.skip else next(waves),
                site_id=p.site_id,
                from_version=p.from_version,
                state=(ItemState.SKIPPED if p.skip else ItemState.PENDING).value,
                reason=p.skip,
            )
        )
    session.flush()
    record(session, f"rollout.{kind.value}", None, rollout=rollout.id, to=to_version)
    return rollout


def _refuse_concurrent(session: Session, kind: RolloutKind, app_id: str | None) -> None:
    query = select(Rollout.id).where(
        Rollout.kind == kind.value, Rollout.state == RolloutState.RUNNING.value
    )
    if app_id is not None:
        query = query.where(Rollout.app_id == app_id)
    running = session.scalar(query.limit(1))
    if running is not None:
        what = "this app" if app_id else "agents"
        raise ConflictError(f"rollout {running} of {what} is still running; wait for it to end")


def refuse_if_upgrading_agents(session: Session) -> None:
    """ConflictError while an agent upgrade runs (it owns the sites' agent targets)."""
    _refuse_concurrent(session, RolloutKind.AGENT, None)


def refuse_if_rolling(session: Session, app: App) -> None:
    """ConflictError while a rollout of ``app`` runs (one version change at a time)."""
    _refuse_concurrent(session, RolloutKind.APP, app.id)


def start_app_rollout(
    session: Session, app: App, previous: int, options: RolloutOptions, grace_s: float
) -> Rollout:
    """Roll the app's instances to its latest version (``app.version``; it was
    ``previous``, and is again if the rollout fails), ordered by site name. Instances
    started at a site by a local client are not moved (their site holds their
    definition), nor deleted ones, nor those on sites offline now (a wave must not
    wait on a cut link: they move when the app is published again)."""
    refuse_if_rolling(session, app)
    rows = session.execute(
        select(Instance, Site)
        .join(Site, Site.id == Instance.site_id)
        .where(
            Instance.app_id == app.id,
            Instance.origin == InstanceOrigin.CONTROLLER.value,
            Instance.desired_state != DesiredState.DELETED.value,
        )
        .order_by(Site.name, Instance.name)
    ).all()
    now = utcnow()
    planned = []
    for i, site in rows:
        skip = None
        if i.app_version == app.version:
            skip = "already at this version"
        elif availability(site, now, grace_s) is not Availability.ONLINE:
            skip = "offline at the start"
        planned.append(Planned(i.id, i.site_id, str(i.app_version), skip=skip))
    return _create(
        session,
        RolloutKind.APP,
        app.project,
        str(app.version),
        options,
        planned,
        app.id,
        from_version=str(previous),
    )


def start_agent_rollout(
    session: Session,
    version: str,
    options: RolloutOptions,
    site_names: Iterable[str] | None,
    grace_s: float,
) -> Rollout:
    """Upgrade the agents of the named sites (default: every active site), ordered by
    name. Sites offline at the start are skipped: a wave must not wait on a cut link."""
    refuse_if_upgrading_agents(session)
    agent_packages.get_package(session, version)
    query = select(Site).where(Site.state == SiteState.ACTIVE.value).order_by(Site.name)
    if site_names is not None:
        names = set(site_names)
        query = query.where(Site.name.in_(names))
    sites = list(session.scalars(query))
    if site_names is not None and len(sites) != len(names):
        missing = sorted(names - {s.name for s in sites})
        raise InvalidInputError(f"no active site named {', '.join(missing)}")
    now = utcnow()
    planned = []
    for site in sites:
        skip = None
        if site.agent_version == version:
            skip = "already at this version"
        elif availability(site, now, grace_s) is not Availability.ONLINE:
            skip = "offline at the start"
        planned.append(Planned(site.id, site.id, site.agent_version, skip=skip))
    return _create(session, RolloutKind.AGENT, "admin", version, options, planned)


# --- advancing --------------------------------------------------------------------------


@dataclass
class Pass:
    """What one pass did: the sites whose desired state changed (to wake)."""

    sites: set[str] = field(default_factory=set)


def advance(session: Session, grace_s: float) -> Pass:
    """One pass over every running rollout."""
    done = Pass()
    running = session.scalars(
        select(Rollout)
        .where(Rollout.state == RolloutState.RUNNING.value)
        .order_by(Rollout.created_at)
        .with_for_update(skip_locked=True)
    ).all()
    for rollout in running:
        _advance(session, rollout, done, grace_s)
    return done


def _advance(session: Session, rollout: Rollout, done: Pass, grace_s: float) -> None:
    now = utcnow()
    items = list(
        session.scalars(
            select(RolloutItem)
            .where(RolloutItem.rollout_id == rollout.id)
            .order_by(RolloutItem.position)
        )
    )
    mover = _APP if rollout.kind == RolloutKind.APP.value else _AGENT
    while True:
        wave = [i for i in items if i.wave == rollout.wave]
        for item in wave:
            if item.state == ItemState.PENDING.value:
                mover.move(session, rollout, item, now, done, grace_s)
            elif item.state == ItemState.UPDATING.value:
                mover.judge(session, rollout, item, now)
        failed = [i for i in wave if i.state == ItemState.FAILED.value]
        if failed:
            for item in wave:
                if item.state in _MOVED:
                    mover.roll_back(session, item, done)
                if item.state in (ItemState.UPDATING.value, ItemState.HEALTHY.value):
                    item.state = ItemState.ROLLED_BACK.value  # a failed one stays failed
                    item.finished_at = now
            first = failed[0]
            if rollout.kind == RolloutKind.APP.value:
                _restore_app(session, rollout)
            _finish(
                session,
                rollout,
                RolloutState.FAILED,
                now,
                f"wave {rollout.wave + 1}: {mover.name(session, first)}: {first.reason}; "
                "the wave was rolled back and later waves were not started",
            )
            return
        if not all(i.state in _DONE for i in wave):
            _touch(rollout, now)
            return
        later = [i.wave for i in items if i.wave > rollout.wave]
        if not later:
            _finish(session, rollout, RolloutState.SUCCEEDED, now, None)
            return
        rollout.wave = min(later)


def _restore_app(session: Session, rollout: Rollout) -> None:
    """A failed app rollout puts the app back at its version from before the publish,
    so that instances created from now on do not run the version that failed."""
    app = session.get(App, rollout.app_id) if rollout.app_id else None
    if app is None or rollout.from_version is None:
        return
    previous = session.get(AppVersion, (app.id, int(rollout.from_version)))
    if previous is None:
        return
    app.version = previous.version
    app.components = previous.components
    app.resources = previous.resources


def _touch(rollout: Rollout, now: datetime) -> None:
    rollout.updated_at = now


def _finish(
    session: Session, rollout: Rollout, state: RolloutState, now: datetime, reason: str | None
) -> None:
    rollout.state = state.value
    rollout.reason = reason
    rollout.updated_at = rollout.finished_at = now
    record(session, f"rollout.{state.value}", None, rollout=rollout.id, reason=reason)


def _timed_out(rollout: Rollout, item: RolloutItem, now: datetime) -> bool:
    assert item.started_at is not None
    return (now - item.started_at).total_seconds() > rollout.health_timeout_s


def _fail(item: RolloutItem, now: datetime, reason: str) -> None:
    item.state = ItemState.FAILED.value
    item.reason = reason
    item.finished_at = now


def _started(item: RolloutItem, now: datetime, revision: int | None) -> None:
    item.state = ItemState.UPDATING.value
    item.started_at = now
    item.revision = revision


class _AppMover:
    """Moves one instance between versions of its app."""

    @staticmethod
    def name(session: Session, item: RolloutItem) -> str:
        instance = session.get(Instance, item.entity_id)
        site = session.get(Site, item.site_id)
        where = f" at {site.name}" if site else ""
        return f"instance {instance.name if instance else item.entity_id}{where}"

    @staticmethod
    def _set_version(session: Session, instance: Instance, version: int) -> int:
        revision = bump_revision(session, instance.site_id)
        session.execute(
            update(Instance)
            .where(Instance.id == instance.id)
            .values(app_version=version, revision=revision, updated_at=utcnow())
        )
        return revision

    def move(
        self,
        session: Session,
        rollout: Rollout,
        item: RolloutItem,
        now: datetime,
        done: Pass,
        grace_s: float,
    ) -> None:
        instance = session.get(Instance, item.entity_id)
        if instance is None or instance.desired_state == DesiredState.DELETED.value:
            item.state, item.reason = ItemState.SKIPPED.value, "deleted before its wave"
            return
        site = session.get_one(Site, instance.site_id)
        if availability(site, now, grace_s) is not Availability.ONLINE:
            item.state, item.reason = ItemState.SKIPPED.value, "offline at its wave"
            return
        revision = self._set_version(session, instance, int(rollout.to_version))
        item.site_id = instance.site_id
        done.sites.add(instance.site_id)
        _started(item, now, revision)

    def judge(self, session: Session, rollout: Rollout, item: RolloutItem, now: datetime) -> None:
        instance = session.get(Instance, item.entity_id)
        if instance is None or instance.desired_state == DesiredState.DELETED.value:
            item.state, item.reason = ItemState.SKIPPED.value, "deleted during its wave"
            return
        # The instance's own applied revision (reported), not its site's: a site's
        # cursor moves on while a VM's new definition is still being started.
        applied = instance.site_id != item.site_id or (instance.applied_revision or 0) >= (
            item.revision or 0
        )
        if instance.desired_state != DesiredState.RUNNING.value:
            site = session.get_one(Site, instance.site_id)
            if site.applied_revision >= (item.revision or 0):  # nothing to serve
                item.state, item.finished_at = ItemState.HEALTHY.value, now
            return
        if applied and instance.actual_state == ActualState.RUNNING.value:
            item.state, item.finished_at = ItemState.HEALTHY.value, now
        elif applied and instance.actual_state == ActualState.FAILED.value:
            _fail(item, now, f"failed at the new version: {instance.reason or 'no reason given'}")
        elif _timed_out(rollout, item, now):
            seen = instance.actual_state if applied else "the change not applied yet"
            why = f" ({instance.reason})" if applied and instance.reason else ""
            _fail(item, now, f"not serving within {rollout.health_timeout_s:g} s: {seen}{why}")

    def roll_back(self, session: Session, item: RolloutItem, done: Pass) -> None:
        instance = session.get(Instance, item.entity_id)
        if instance is None or item.from_version is None:
            return
        self._set_version(session, instance, int(item.from_version))
        done.sites.add(instance.site_id)


class _AgentMover:
    """Moves one site's agent between versions."""

    @staticmethod
    def name(session: Session, item: RolloutItem) -> str:
        site = session.get(Site, item.site_id)
        return f"site {site.name if site else item.site_id}"

    def move(
        self,
        session: Session,
        rollout: Rollout,
        item: RolloutItem,
        now: datetime,
        done: Pass,
        grace_s: float,
    ) -> None:
        site = session.get_one(Site, item.site_id)
        agent_packages.set_agent_target(session, site, rollout.to_version)
        done.sites.add(site.id)
        _started(item, now, None)

    def judge(self, session: Session, rollout: Rollout, item: RolloutItem, now: datetime) -> None:
        """Healthy once the site's new agent says it committed the upgrade (an
        ``agent.upgrade`` event, phase ``upgraded``): a report with the new version
        alone is no proof, since a trial agent may send one before it falls over."""
        assert item.started_at is not None
        outcome = session.scalar(
            select(Event.data)
            .where(
                Event.site_id == item.site_id,
                Event.kind == EventKind.AGENT_UPGRADE.value,
                Event.received_at >= item.started_at,
                Event.data["to"].as_string() == rollout.to_version,
                Event.data["phase"].as_string().in_(("upgraded", "failed")),
            )
            .order_by(Event.seq.desc())
            .limit(1)
        )
        if outcome and outcome.get("phase") == "upgraded":
            item.state, item.finished_at = ItemState.HEALTHY.value, now
        elif outcome:
            why = outcome.get("reason") or "no reason given"
            _fail(item, now, f"the agent rolled back: {why}")
        elif _timed_out(rollout, item, now):
            deadline = rollout.health_timeout_s
            _fail(item, now, f"not back at {rollout.to_version} within {deadline:g} s")

    def roll_back(self, session: Session, item: RolloutItem, done: Pass) -> None:
        site = session.get(Site, item.site_id)
        if site is None:
            return
        agent_packages.set_agent_target(session, site, item.from_version)
        done.sites.add(site.id)


_APP = _AppMover()
_AGENT = _AgentMover()


# --- reading ----------------------------------------------------------------------------


def list_rollouts(
    session: Session, project: str | None, app_id: str | None = None, limit: int = 50
) -> list[Rollout]:
    """Newest first."""
    query = select(Rollout).order_by(Rollout.created_at.desc(), Rollout.id).limit(limit)
    if project is not None:  # not an admin: its project's app rollouts only
        query = query.where(Rollout.project == project, Rollout.kind == RolloutKind.APP.value)
    if app_id is not None:
        query = query.where(Rollout.app_id == app_id)
    return list(session.scalars(query))


def get_rollout(session: Session, project: str | None, rollout_id: str) -> Rollout | None:
    rollout = session.get(Rollout, rollout_id)
    if rollout is None or (
        project is not None
        and (rollout.project != project or rollout.kind != RolloutKind.APP.value)
    ):
        return None
    return rollout


def rollout_view(session: Session, rollout: Rollout, with_items: bool = True) -> RolloutOut:
    items = []
    if with_items:
        items = session.scalars(
            select(RolloutItem)
            .where(RolloutItem.rollout_id == rollout.id)
            .order_by(RolloutItem.position)
        ).all()
    last_wave = session.scalar(
        select(func.max(RolloutItem.wave)).where(RolloutItem.rollout_id == rollout.id)
    )
    names = dict(
        session.execute(select(Site.id, Site.name).where(Site.id.in_({i.site_id for i in items})))
        .tuples()
        .all()
    )
    app = session.get(App, rollout.app_id) if rollout.app_id else None
    agent = rollout.kind == RolloutKind.AGENT.value
    return RolloutOut(
        id=rollout.id,
        kind=RolloutKind(rollout.kind),
        app=app.name if app else None,
        project=rollout.project,
        to_version=rollout.to_version,
        strategy=RolloutStrategy(rollout.strategy),
        max_parallel=rollout.max_parallel,
        canary=rollout.canary,
        health_timeout_s=rollout.health_timeout_s,
        state=RolloutState(rollout.state),
        wave=rollout.wave,
        waves=(last_wave if last_wave is not None else -1) + 1,
        reason=rollout.reason,
        created_at=rollout.created_at,
        updated_at=rollout.updated_at,
        finished_at=rollout.finished_at,
        items=[
            RolloutItemOut(
                entity=names.get(i.site_id, i.site_id) if agent else i.entity_id,
                site=names.get(i.site_id, i.site_id),
                wave=i.wave,
                from_version=i.from_version,
                state=ItemState(i.state),
                started_at=i.started_at,
                finished_at=i.finished_at,
                reason=i.reason,
            )
            for i in items
        ]
        if with_items
        else [],
    )
