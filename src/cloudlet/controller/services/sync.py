"""The controller's side of the agent protocol: desired-state pulls and reports."""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, case, delete, or_, select, update
from sqlalchemy.orm import Session

from cloudlet.controller.db.dialect import insert_ignore
from cloudlet.controller.db.models import (
    App,
    AppVersion,
    Event,
    Handoff,
    Instance,
    InstanceDeparture,
    Site,
)
from cloudlet.controller.services import alarms, checkpoints, signing, usage_records
from cloudlet.controller.services._util import new_id, utcnow
from cloudlet.controller.services.agent_packages import agent_target
from cloudlet.controller.services.auth import SiteBrief
from cloudlet.controller.services.client_tokens import public_keys, revoked_ids
from cloudlet.controller.services.instances import bump_revision, purge_tombstones
from cloudlet.controller.services.mobility import (
    handoff_orders,
    incoming,
    note_running,
    purge_departures,
)
from cloudlet.controller.services.site_images import record_cache, site_image_digests
from cloudlet.schemas import (
    ActualInstance,
    ActualState,
    AgentReport,
    Component,
    DesiredInstance,
    DesiredState,
    DesiredStateDoc,
    EventKind,
    InstanceOrigin,
    OutboxEvent,
    RejectedEvent,
    Resources,
)
from cloudlet.schemas.alarms import AlarmSignal, AlarmSource, AlarmState
from cloudlet.schemas.mobility import CheckpointRestore, HandoffOrder

log = logging.getLogger(__name__)


#: An app's definition at one version: its components and resources.
Definition = tuple[list[Component], Resources]


class _Definitions:
    """App definitions by (app, version), read once per desired document: the latest
    from the app row, older ones (instances a rollout has not moved yet) on demand."""

    def __init__(self, session: Session) -> None:
        self._session = session
        self._held: dict[tuple[str, int], Definition] = {}

    def of(self, instance: Instance, app: App) -> Definition:
        key = (app.id, instance.app_version)
        if key not in self._held:
            source: App | AppVersion | None = app
            if instance.app_version != app.version:
                source = self._session.get(AppVersion, key)
                if source is None:  # not written by this code: say so, serve the latest
                    log.error("app %s has no version %d", app.name, instance.app_version)
                    source = app
            self._held[key] = (
                [Component.model_validate(c) for c in source.components],
                Resources.model_validate(source.resources),
            )
        return self._held[key]


def _desired(
    instance: Instance,
    app: App,
    definition: Definition,
    order: HandoffOrder | None = None,
    restore: CheckpointRestore | None = None,
) -> DesiredInstance:
    components, resources = definition
    return DesiredInstance(
        id=instance.id,
        name=instance.name,
        app=app.name,
        project=instance.project,
        desired_state=DesiredState(instance.desired_state),
        components=components,
        resources=resources,
        revision=instance.revision,
        restarts=instance.restarts,
        epoch=instance.epoch,
        handoff=order,
        relocatable=app.relocatable,
        app_version=instance.app_version,
        checkpoint_interval_s=app.checkpoint_interval_s,
        restore=restore,
    )


def _departed(
    instance: Instance, app: App, definition: Definition, departure: InstanceDeparture
) -> DesiredInstance:
    """What a site an instance moved away from must apply: deleted, at the new epoch."""
    components, resources = definition
    return DesiredInstance(
        id=instance.id,
        name=instance.name,
        app=app.name,
        project=instance.project,
        desired_state=DesiredState.DELETED,
        components=components,
        resources=resources,
        revision=departure.revision,
        epoch=departure.epoch,
        app_version=instance.app_version,
    )


def delta_possible(site: Site, since: int) -> bool:
    """A delta from ``since`` is complete only if no deletion after it was purged
    and the agent is not ahead of us (a controller restored from a backup)."""
    return site.tombstone_floor <= since <= site.revision


def desired_doc(session: Session, site: Site, since: int) -> DesiredStateDoc:
    """Everything the agent must apply to move from revision ``since`` to now."""
    query = select(Instance, App).join(App, App.id == Instance.app_id)
    query = query.where(Instance.site_id == site.id, Instance.origin == "controller")
    full = since <= 0 or not delta_possible(site, since)
    if full:
        query = query.where(Instance.desired_state != DesiredState.DELETED.value)
    else:
        query = query.where(Instance.revision > since)
    rows = session.execute(query.order_by(Instance.revision)).all()
    orders = handoff_orders(session, site)
    definitions = _Definitions(session)
    restores = checkpoints.restores(session, site.id) if rows else {}  # most sites: none
    entries = [
        _desired(i, a, definitions.of(i, a), orders.get(i.id), restores.get(i.id)) for i, a in rows
    ]
    for i, a, h in incoming(session, site, since, full):
        entry = _desired(i, a, definitions.of(i, a), orders.get(i.id))
        update = {"epoch": h.epoch, "revision": h.dest_revision or 0}
        entries.append(entry.model_copy(update=update))
    if not full:  # a snapshot says "moved away" by not naming the instance at all
        departed = session.execute(
            select(Instance, App, InstanceDeparture)
            .join(App, App.id == Instance.app_id)
            .join(InstanceDeparture, InstanceDeparture.instance_id == Instance.id)
            .where(InstanceDeparture.site_id == site.id, InstanceDeparture.revision > since)
        ).all()
        entries += [_departed(i, a, definitions.of(i, a), d) for i, a, d in departed]
    entries = signing.attach(session, entries)
    entries.sort(key=lambda e: e.revision)
    return DesiredStateDoc(
        site=site.name,
        revision=site.revision,
        full=full,
        since=0 if full else since,
        instances=entries,
        images=site_image_digests(session, site.id),
        agent=agent_target(session, site),
        client_keys=public_keys(session),
        client_revoked=revoked_ids(session),
    )


_SITE_REVISIONS = select(Site.id, Site.revision).where(
    Site.id.in_(bindparam("site_ids", expanding=True))
)


def site_revisions(connection: Connection, site_ids: list[str]) -> dict[str, int]:
    """Sites' current desired-state revisions, as one prebuilt Core query."""
    return {i: r for i, r in connection.execute(_SITE_REVISIONS, {"site_ids": site_ids})}


def store_events(
    session: Session,
    site: Site,
    report: AgentReport,
    max_seq_jump: int,
    now: datetime | None = None,
) -> tuple[int, list[RejectedEvent]]:
    """Store the report's acceptable events once each.

    Returns:
        The highest sequence the agent may now drop (stored, or refused for good),
        and the refused events with their reasons.
    """
    if not report.events:
        return site.acked_seq, []
    accepted, rejected = screen_events(session, site, report, max_seq_jump)
    signals = _alarm_signals(accepted)
    if accepted:
        now = now or utcnow()
        rows = [
            {
                "site_id": site.id,
                "seq": e.seq,
                "kind": e.kind.value,
                "project": project,
                "instance_id": e.instance,
                "at": e.at,
                "data": e.data,
                "received_at": now,
            }
            for e, project in accepted
        ]
        insert = insert_ignore(Event.__table__, session.get_bind().dialect.name)
        if signals:
            # Only events stored now raise or clear: one sent again after a lost ack
            # must not raise an alarm cleared since.
            stored = set(session.scalars(insert.returning(Event.seq), rows))
            signals = [f for f in signals if f[0].seq in stored]
        else:
            session.execute(insert, rows)
        # Keyed by (site, seq) too, so a record sent again adds nothing.
        usage_records.record(
            session, site, [a for a in accepted if a[0].kind is EventKind.USAGE], now
        )
    for event, project, signal in signals:
        apply_alarm_signal(session, site, event, project, signal)
    ceiling = site.acked_seq + max_seq_jump
    settled = [e.seq for e, _ in accepted] + [r.seq for r in rejected if r.seq <= ceiling]
    return max([site.acked_seq, *settled]), rejected


def _alarm_signals(
    accepted: list[tuple[OutboxEvent, str | None]],
) -> list[tuple[OutboxEvent, str | None, AlarmSignal]]:
    """The raise/clear signals among the events, oldest first."""
    found = [
        (e, project, signal)
        for e, project in accepted
        if e.kind is EventKind.ALARM and (signal := AlarmSignal.parse(e.data)) is not None
    ]
    return sorted(found, key=lambda f: f[0].seq)


def apply_alarm_signal(
    session: Session,
    site: Site,
    event: OutboxEvent,
    project: str | None,
    signal: AlarmSignal,
) -> None:
    """Turn a site's alarm event into an alarm row, at the site's own times: a raise
    and a clear sent after an outage make one history row with both."""
    if event.instance is not None:
        entity = alarms.instance_entity(site.name, event.instance)
    else:
        entity = alarms.site_entity(site.name)  # a site speaks only for itself
    if signal.state is AlarmState.CLEAR:
        if alarms.clear_alarm(session, signal.alarm_id, entity, at=event.at, site_name=site.name):
            return
        log.info("site %s cleared %s about %s, not active here", site.name, signal.alarm_id, entity)
        return
    alarms.raise_alarm(
        session,
        signal.alarm_id,
        entity,
        signal.severity,
        site=site,
        project=project,
        instance_id=event.instance,
        reason=signal.reason,
        source=AlarmSource.SITE,
        at=event.at,
    )


def screen_events(
    session: Session, site: Site, report: AgentReport, max_seq_jump: int
) -> tuple[list[tuple[OutboxEvent, str | None]], list[RejectedEvent]]:
    """Split a report's events into those a site may record, each with the project it
    is billed to, and those it may not.

    A site speaks only for itself: an event about an instance must be about one
    placed at this site, or one that was (a handoff or failover moved it away: the
    events of its old copy still count), or one unknown here that no other site
    has reported on (a site-origin instance, or one purged since). The project of a known instance
    is ours to say, not the site's. A sequence number may run ahead of the last
    acknowledged one (a controller restored from a backup sees that), but only so far.
    """
    ceiling = site.acked_seq + max_seq_jump
    ids = {e.instance for e in report.events if e.instance}
    known: dict[str, tuple[str, str]] = {}
    foreign: set[str] = set()
    if ids:
        rows = session.execute(
            select(Instance.id, Instance.site_id, Instance.project).where(Instance.id.in_(ids))
        )
        known = {i: (s, p) for i, s, p in rows}
        moved = [i for i, (owner, _) in known.items() if owner != site.id]
        if moved:
            been_here = set(
                session.scalars(
                    select(Handoff.instance_id).where(
                        Handoff.instance_id.in_(moved),
                        or_(Handoff.source_site_id == site.id, Handoff.dest_site_id == site.id),
                    )
                )
            )
            known.update({i: (site.id, known[i][1]) for i in been_here})
        unknown = ids - known.keys()
        if unknown:
            foreign = set(
                session.scalars(
                    select(Event.instance_id)
                    .where(Event.instance_id.in_(unknown), Event.site_id != site.id)
                    .distinct()
                )
            )
    accepted: list[tuple[OutboxEvent, str | None]] = []
    rejected: list[RejectedEvent] = []
    for e in report.events:
        claimed = e.data.get("project")
        project = claimed if isinstance(claimed, str) else None
        reason = None
        if e.seq > ceiling:
            reason = (
                f"seq {e.seq} is more than {max_seq_jump} past the last acknowledged "
                f"{site.acked_seq}"
            )
        elif e.instance in known:
            owner, project = known[e.instance]
            if owner != site.id:
                reason = f"instance {e.instance} is not placed at this site"
            elif claimed is not None and claimed != project:
                reason = f"instance {e.instance} belongs to project {project!r}, not {claimed!r}"
        elif e.instance in foreign:
            reason = f"instance {e.instance} was reported by another site"
        if reason is None:
            accepted.append((e, project))
        else:
            rejected.append(RejectedEvent(seq=e.seq, reason=reason))
    if rejected:
        log.warning(
            "site %s: refused %d of %d events (first: seq %d, %s)",
            site.name,
            len(rejected),
            len(report.events),
            rejected[0].seq,
            rejected[0].reason,
        )
    return accepted, rejected


def _apply_actual(session: Session, site: Site, reported: list[ActualInstance]) -> None:
    ids = [r.id for r in reported]
    known = {i.id: i for i in session.scalars(select(Instance).where(Instance.id.in_(ids)))}
    for r in reported:
        instance = known.get(r.id)
        if instance is None:
            if r.origin is InstanceOrigin.SITE:
                _adopt_site_instance(session, site, r)
            continue
        if instance.site_id != site.id or r.epoch < instance.epoch:
            continue  # a stale report from a site the instance was moved away from
        if instance.actual_updated_at and r.updated_at < instance.actual_updated_at:
            continue
        if r.state is ActualState.RUNNING and r.state.value != instance.actual_state:
            note_running(session, instance)
        instance.actual_state = r.state.value
        instance.endpoint = r.endpoint
        instance.reason = r.reason
        instance.timings = dict(r.timings)
        instance.usage_since = r.usage_since
        instance.crash_restarts = r.crash_restarts or 0
        if r.applied_revision is not None:
            instance.applied_revision = r.applied_revision
        instance.actual_updated_at = r.updated_at
        instance.updated_at = utcnow()


def _adopt_site_instance(session: Session, site: Site, r: ActualInstance) -> None:
    """Record an instance a local client started at the site while we were away."""
    app = session.scalar(select(App).where(App.project == r.project, App.name == r.app))
    if app is None:
        return
    now = utcnow()
    session.add(
        Instance(
            id=r.id,
            project=r.project,
            name=r.name if not _name_taken(session, r) else f"{r.name}-{new_id()[:6]}",
            app_id=app.id,
            app_version=app.version,
            site_id=site.id,
            origin=InstanceOrigin.SITE.value,
            desired_state=DesiredState.RUNNING.value,
            revision=bump_revision(session, site.id),
            actual_state=r.state.value,
            endpoint=r.endpoint,
            reason=r.reason,
            timings=dict(r.timings),
            usage_since=r.usage_since,
            restarts=0,
            crash_restarts=r.crash_restarts or 0,
            actual_updated_at=r.updated_at,
            created_at=now,
            updated_at=now,
        )
    )


def _name_taken(session: Session, r: ActualInstance) -> bool:
    return (
        session.scalar(
            select(Instance.id).where(Instance.project == r.project, Instance.name == r.name)
        )
        is not None
    )


def is_heartbeat(report: AgentReport) -> bool:
    """True for the common report that carries no events, no instance list and no
    cache listing: it changes liveness, gauges and maybe the applied revision. Its
    values may be written later, in a batch (:func:`heartbeat_values`,
    :func:`write_heartbeats`): after a fleet-wide change every site reports its
    applied revision moved, and ten thousand transactions would queue for seconds."""
    return not report.events and report.instances is None and report.cache is None


def heartbeat_values(
    report: AgentReport, now: datetime, site: SiteBrief | None = None
) -> dict[str, object]:
    """The site columns a report sets: last seen, agent version, gauges, and (given
    the site) its applied revision if it moved, capped at the real revision."""
    values: dict[str, object] = {"last_seen": now, "agent_version": report.agent_version}
    if report.capacity is not None:
        values["capacity"] = report.capacity.model_dump()
    if report.utilization is not None:
        values["utilization"] = report.utilization.model_dump()
    if report.local_api is not None:
        values["local_api_url"] = report.local_api
    if site is not None:
        applied = min(report.applied_revision, site.revision)
        if applied > site.applied_revision:
            values["applied_revision"] = applied
    return values


def write_heartbeats(connection: Connection, pending: dict[str, dict[str, object]]) -> None:
    """Write buffered heartbeats, one executemany per set of columns. A row that
    holds a newer ``last_seen`` already (a full report written meanwhile, maybe by
    another replica) keeps its values; an applied revision only moves forward, and
    the departures it covers are forgotten."""
    table = Site.__table__
    groups: dict[tuple[str, ...], list[dict[str, object]]] = defaultdict(list)
    # In one order everywhere (site id), so that concurrent batches (another
    # replica's, the traffic counters') lock rows in the same order: no deadlocks.
    for site_id, values in sorted(pending.items()):
        groups[tuple(values)].append({"b_id": site_id, **{f"b_{k}": v for k, v in values.items()}})
    for columns, rows in groups.items():
        newer = bindparam("b_last_seen")
        assigned: dict[str, Any] = {name: bindparam(f"b_{name}") for name in columns}
        if "applied_revision" in assigned:
            moved = bindparam("b_applied_revision")
            assigned["applied_revision"] = case(
                (table.c.applied_revision < moved, moved), else_=table.c.applied_revision
            )
        statement = (
            update(table)
            .where(table.c.id == bindparam("b_id"))
            .where(or_(table.c.last_seen.is_(None), table.c.last_seen < newer))
            .values(assigned)
        )
        connection.execute(statement, rows)
    applied = [
        {"b_site": site_id, "b_applied": values["applied_revision"]}
        for site_id, values in pending.items()
        if "applied_revision" in values
    ]
    if applied:
        departures = InstanceDeparture.__table__
        connection.execute(
            delete(departures).where(
                departures.c.site_id == bindparam("b_site"),
                departures.c.revision <= bindparam("b_applied"),
            ),
            applied,
        )


def ingest_report(
    session: Session, site: Site, report: AgentReport, now: datetime, max_seq_jump: int
) -> tuple[int, list[RejectedEvent]]:
    """Apply one agent report in one UPDATE of the site row.

    Returns:
        The acknowledged sequence number and the events refused.
    """
    acked, rejected = store_events(session, site, report, max_seq_jump, now)
    if report.instances is not None:
        _apply_actual(session, site, report.instances)
    if report.cache is not None:
        record_cache(session, site, report.cache)
    values = heartbeat_values(report, now)
    if acked != site.acked_seq:
        values["acked_seq"] = acked
    applied = min(report.applied_revision, site.revision)
    if applied > site.applied_revision:
        values["applied_revision"] = applied
        purge_departures(session, site.id, applied)
    if report.instances is not None:
        # Deletions the agent applied and no longer reports need no tombstone.
        alive = [r.id for r in report.instances if r.state is not ActualState.DELETED]
        purge_tombstones(
            session,
            (Instance.site_id == site.id)
            & (Instance.revision <= applied)
            & Instance.id.not_in(alive),
        )
    session.execute(update(Site).where(Site.id == site.id).values(**values))
    return acked, rejected
