"""Alarms: raise once, clear once, keep the history; the controller's own site alarms
(site.offline from the liveness verdict, site.sync-lag from the revisions).

One active alarm per (alarm id, entity), held by a partial unique index: raising an
active alarm is a no-op and clearing clears it once, race-free between replicas.
Every raise and clear that happened is noted in ``session.info`` so that, once the
transaction commits, a notifier (the webhook) can pass it on (:func:`take_notices`).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, or_, select, update
from sqlalchemy.orm import Session

from cloudlet.controller.db.dialect import insert_ignore
from cloudlet.controller.db.models import Alarm, Site
from cloudlet.controller.services._util import new_id, utcnow
from cloudlet.controller.services.fleet import site_names
from cloudlet.schemas.alarms import MAX_ALARM_REASON, AlarmId, AlarmSeverity, AlarmSource
from cloudlet.schemas.alarms import Alarm as AlarmOut

_NOTICES = "cloudlet.alarm_notices"


def site_entity(site_name: str) -> str:
    return f"site={site_name}"


def instance_entity(site_name: str, instance_id: str) -> str:
    return f"site={site_name}/instance={instance_id}"


def _cut(reason: str | None) -> str | None:
    if reason is None or len(reason) <= MAX_ALARM_REASON:
        return reason
    return reason[: MAX_ALARM_REASON - 1] + "…"


def raise_alarm(
    session: Session,
    alarm_id: str,
    entity: str,
    severity: AlarmSeverity,
    *,
    site: Site | None = None,
    project: str | None = None,
    instance_id: str | None = None,
    reason: str | None = None,
    source: AlarmSource = AlarmSource.CONTROLLER,
    at: datetime | None = None,
) -> Alarm | None:
    """Raise ``alarm_id`` about ``entity`` unless it is active already.

    Returns:
        The new alarm row, or None when one was active (nothing changes).
    """
    row = {
        "id": new_id(),
        "alarm_id": alarm_id,
        "severity": AlarmSeverity(severity).value,
        "entity": entity,
        "site_id": site.id if site is not None else None,
        "project": project,
        "instance_id": instance_id,
        "reason": _cut(reason),
        "source": AlarmSource(source).value,
        "raised_at": at or utcnow(),
        "cleared_at": None,
    }
    dialect = session.get_bind().dialect.name
    inserted = session.execute(
        insert_ignore(Alarm.__table__, dialect).values(row).returning(Alarm.__table__.c.id)
    ).scalar()
    if inserted is None:
        return None
    alarm = session.get_one(Alarm, inserted)
    _notice(session, alarm, site.name if site is not None else None, "raise")
    return alarm


def clear_alarm(
    session: Session,
    alarm_id: str,
    entity: str,
    *,
    at: datetime | None = None,
    site_name: str | None = None,
) -> Alarm | None:
    """Clear the active ``alarm_id`` about ``entity``.

    Returns:
        The cleared row, or None when none was active (nothing changes).
    """
    when = at or utcnow()
    cleared = session.execute(
        update(Alarm)
        .where(Alarm.alarm_id == alarm_id, Alarm.entity == entity, Alarm.cleared_at.is_(None))
        .values(cleared_at=when)
        .returning(Alarm.id)
        .execution_options(synchronize_session=False)
    ).scalar()
    if cleared is None:
        return None
    alarm = session.get_one(Alarm, cleared)
    session.refresh(alarm)
    _notice(session, alarm, site_name, "clear")
    return alarm


def clear_site(session: Session, site: Site, at: datetime | None = None) -> int:
    """Clear every active alarm about a site and its instances (it was decommissioned)."""
    active = session.scalars(
        select(Alarm).where(Alarm.site_id == site.id, Alarm.cleared_at.is_(None))
    ).all()
    return sum(
        clear_alarm(session, a.alarm_id, a.entity, at=at, site_name=site.name) is not None
        for a in active
    )


def list_alarms(
    session: Session,
    *,
    active: bool | None = None,
    site: Site | None = None,
    project: str | None = None,
    limit: int = 1000,
) -> list[AlarmOut]:
    """Alarms newest first: only active ones (``active``), one site's, one project's."""
    query = select(Alarm, Site.name).outerjoin(Site, Site.id == Alarm.site_id)
    if active is True:
        query = query.where(Alarm.cleared_at.is_(None))
    elif active is False:
        query = query.where(Alarm.cleared_at.is_not(None))
    if site is not None:
        query = query.where(Alarm.site_id == site.id)
    if project is not None:
        query = query.where(Alarm.project == project)
    rows = session.execute(query.order_by(Alarm.raised_at.desc(), Alarm.id).limit(limit))
    return [view(alarm, name) for alarm, name in rows]


def view(alarm: Alarm | Row[Any], site_name: str | None) -> AlarmOut:
    """The API's view of an alarm (a mapped row, or a row a statement returned)."""
    return AlarmOut(
        id=alarm.id,
        alarm_id=alarm.alarm_id,
        severity=AlarmSeverity(alarm.severity),
        entity=alarm.entity,
        site=site_name,
        project=alarm.project,
        instance=alarm.instance_id,
        reason=alarm.reason,
        source=AlarmSource(alarm.source),
        raised_at=alarm.raised_at,
        cleared_at=alarm.cleared_at,
        active=alarm.cleared_at is None,
    )


#: The fields of an alarm a webhook receives, besides ``state``.
_PAYLOAD = {"alarm_id", "severity", "entity", "site", "raised_at", "cleared_at", "reason"}


def payload(alarm: Alarm | Row[Any], site_name: str | None, state: str) -> dict[str, Any]:
    """What a webhook receives for one raise or clear (times as the API writes them)."""
    doc = view(alarm, site_name).model_dump(mode="json", include=_PAYLOAD)
    return {**doc, "state": state}


def _notice(session: Session, alarm: Alarm | Row[Any], site_name: str | None, state: str) -> None:
    if site_name is None and alarm.site_id is not None:
        site_name = session.scalar(select(Site.name).where(Site.id == alarm.site_id))
    session.info.setdefault(_NOTICES, []).append(payload(alarm, site_name, state))


def take_notices(session: Session) -> list[dict[str, Any]]:
    """The raises and clears this session made since the last call (call after commit)."""
    return session.info.pop(_NOTICES, [])


def drop_notices(session: Session) -> None:
    """Forget what a rolled-back transaction raised or cleared."""
    session.info.pop(_NOTICES, None)


def judge_site_alarms(
    session: Session, offline: list[str], grace_s: float, clear_hold_s: float
) -> None:
    """Raise site.offline for sites just judged offline; clear it for sites online
    for at least ``clear_hold_s`` without a break (hysteresis: a flapping site keeps
    its one alarm instead of raising and clearing it on every flap).

    In bulk: after a WAN outage thousands of sites cross the grace together.
    """
    now = utcnow()
    if offline:
        sites = session.execute(
            select(Site.id, Site.name, Site.last_seen).where(Site.id.in_(offline))
        ).all()
        _raise_many(
            session,
            AlarmId.SITE_OFFLINE,
            AlarmSeverity.MAJOR,
            [
                (site_id, name, f"no report since {_seen(last_seen)} (grace {grace_s:g} s)")
                for site_id, name, last_seen in sites
            ],
            now,
        )
    held = now - timedelta(seconds=clear_hold_s)
    _clear_where(
        session,
        AlarmId.SITE_OFFLINE,
        (Site.availability == "online")
        & or_(Site.availability_changed_at.is_(None), Site.availability_changed_at <= held),
        now,
    )


def _seen(last_seen: datetime | None) -> str:
    return last_seen.isoformat() if last_seen else "never"


def _raise_many(
    session: Session,
    alarm_id: str,
    severity: AlarmSeverity,
    sites: list[tuple[str, str, str]],
    at: datetime,
) -> None:
    """Raise ``alarm_id`` about each (site id, site name, reason) unless active: one
    statement for them all."""
    if not sites:
        return
    table = Alarm.__table__
    rows = [
        {
            "id": new_id(),
            "alarm_id": alarm_id,
            "severity": severity.value,
            "entity": site_entity(name),
            "site_id": site_id,
            "project": None,
            "instance_id": None,
            "reason": _cut(reason),
            "source": AlarmSource.CONTROLLER.value,
            "raised_at": at,
            "cleared_at": None,
        }
        for site_id, name, reason in sites
    ]
    insert = insert_ignore(table, session.get_bind().dialect.name)
    names = {site_id: name for site_id, name, _ in sites}
    for alarm in session.execute(insert.returning(*table.c), rows):
        _notice(session, alarm, names[alarm.site_id], "raise")


#: Sites named in one statement at most (SQLite allows 32,766 parameters).
_CLEAR_BATCH = 5000


def _clear_where(session: Session, alarm_id: str, site_is: Any, at: datetime) -> None:
    """Clear every active ``alarm_id`` about a site that meets ``site_is``.

    Starts from the active alarms (none, or a few, in a steady fleet) rather than
    from the sites: a subquery of every site meeting ``site_is`` (every online site,
    say) read the whole sites table at each liveness pass.
    """
    active = session.scalars(
        select(Alarm.site_id).where(
            Alarm.alarm_id == alarm_id, Alarm.cleared_at.is_(None), Alarm.site_id.is_not(None)
        )
    ).all()
    columns = Alarm.__table__.c
    cleared = []
    for start in range(0, len(active), _CLEAR_BATCH):
        batch = sorted(active[start : start + _CLEAR_BATCH])
        cleared += session.execute(
            update(Alarm)
            .where(
                Alarm.alarm_id == alarm_id,
                Alarm.cleared_at.is_(None),
                Alarm.site_id.in_(select(Site.id).where(Site.id.in_(batch), site_is)),
            )
            .values(cleared_at=at)
            .returning(*(getattr(Alarm, c.key) for c in columns))
            .execution_options(synchronize_session="fetch")
        ).all()
    if not cleared:
        return
    names = site_names(session, {alarm.site_id for alarm in cleared})
    for alarm in cleared:
        _notice(session, alarm, names.get(alarm.site_id), "clear")


def judge_sync_lag(session: Session, lag_s: float) -> None:
    """Raise site.sync-lag for online sites that have applied nothing of a change made
    ``lag_s`` ago or more; clear it for sites in sync again (or no longer online,
    where site.offline says more)."""
    now = utcnow()
    active = (
        select(Alarm.site_id)
        .where(Alarm.alarm_id == AlarmId.SITE_SYNC_LAG.value, Alarm.cleared_at.is_(None))
        .scalar_subquery()
    )
    lagging = session.execute(
        select(
            Site.id, Site.name, Site.applied_revision, Site.revision, Site.revision_changed_at
        ).where(
            Site.availability == "online",
            Site.applied_revision < Site.revision,
            Site.revision_changed_at <= now - timedelta(seconds=lag_s),
            Site.id.not_in(active),
        )
    ).all()
    _raise_many(
        session,
        AlarmId.SITE_SYNC_LAG,
        AlarmSeverity.MINOR,
        [
            (
                site_id,
                name,
                f"applied revision {applied} of {revision}, changed at {changed.isoformat()}",
            )
            for site_id, name, applied, revision, changed in lagging
        ],
        now,
    )
    caught_up = or_(Site.applied_revision >= Site.revision, Site.availability != "online")
    _clear_where(session, AlarmId.SITE_SYNC_LAG, caught_up, now)
