"""Reading events: what sites reported and what the controller observed, merged in SQL."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Integer,
    Select,
    String,
    and_,
    false,
    literal,
    or_,
    select,
    union_all,
)
from sqlalchemy import true as sql_true
from sqlalchemy.orm import Session

from cloudlet.controller.db.models import ControllerEvent, Event, Instance, Site
from cloudlet.controller.services._paging import split_page

#: One row: (site_id, seq, kind, instance_id, at, data); controller events have seq 0.
EventRow = tuple[str | None, int, str, str | None, datetime, dict[str, Any]]
#: Where an event sits in the merged order: (at, 0 for a site's and 1 for the
#: controller's, site id or "", seq or id). Unique, so lists page by it.
EventKey = tuple[datetime, int, str, int]
#: The types of an :data:`EventKey`, for decoding a cursor.
KEY_TYPES = (datetime, int, str, int)

_SITE, _CONTROLLER = 0, 1


def _before(key: EventKey, at: Any, src: int, site: Any, n: Any) -> ColumnElement[bool]:
    """Rows of the branch ``src`` that come strictly before ``key`` in the merged order."""
    k_at, k_src, k_site, k_n = key
    if src < k_src:
        tail: ColumnElement[bool] = sql_true()
    elif src > k_src:
        tail = false()
    elif src == _CONTROLLER:
        tail = n < k_n
    else:
        tail = or_(site < k_site, and_(site == k_site, n < k_n))
    return or_(at < k_at, and_(at == k_at, tail))


def list_events(
    session: Session,
    *,
    site: Site | None = None,
    kind: str | None = None,
    instance_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 100,
    project: str | None = None,
    before: EventKey | None = None,
) -> tuple[list[EventRow], EventKey | None]:
    """The newest ``limit`` events (before the key ``before``, if given), oldest first,
    and the key to pass as ``before`` for the page of older ones (None: no older ones).

    Site and controller events are merged, ordered and cut in one query. ``project``
    confines the list to events about that project's instances (None: all,
    site-level controller events included).
    """
    ce_instance = ControllerEvent.data["instance"].as_string()
    q1: Select[Any] = select(
        Event.site_id.label("site_id"),
        Event.seq.label("seq"),
        Event.kind.label("kind"),
        Event.instance_id.label("instance_id"),
        Event.at.label("at"),
        Event.data.label("data"),
        literal(_SITE, Integer).label("src"),
        Event.site_id.label("skey"),
        Event.seq.label("n"),
    )
    q2: Select[Any] = select(
        ControllerEvent.site_id,
        literal(0, Integer),
        ControllerEvent.kind,
        ce_instance,
        ControllerEvent.at,
        ControllerEvent.data,
        literal(_CONTROLLER, Integer),
        literal("", String),
        ControllerEvent.id,
    )
    if site is not None:
        q1, q2 = q1.where(Event.site_id == site.id), q2.where(ControllerEvent.site_id == site.id)
    if kind is not None:
        q1, q2 = q1.where(Event.kind == kind), q2.where(ControllerEvent.kind == kind)
    if since is not None:
        q1, q2 = q1.where(Event.at >= since), q2.where(ControllerEvent.at >= since)
    if until is not None:
        q1, q2 = q1.where(Event.at < until), q2.where(ControllerEvent.at < until)
    if project is not None:
        mine = select(Instance.id).where(Instance.project == project)
        q1, q2 = q1.where(Event.project == project), q2.where(ce_instance.in_(mine))
    if instance_id is not None:
        q1, q2 = q1.where(Event.instance_id == instance_id), q2.where(ce_instance == instance_id)
    if before is not None:
        q1 = q1.where(_before(before, Event.at, _SITE, Event.site_id, Event.seq))
        q2 = q2.where(_before(before, ControllerEvent.at, _CONTROLLER, None, ControllerEvent.id))
    # Each side cut to the newest limit + 1 first (by its index on `at`), then merged.
    q1 = q1.order_by(Event.at.desc(), Event.site_id.desc(), Event.seq.desc()).limit(limit + 1)
    q2 = q2.order_by(ControllerEvent.at.desc(), ControllerEvent.id.desc()).limit(limit + 1)
    merged = union_all(select(q1.subquery()), select(q2.subquery())).subquery()
    c = merged.c
    query = (
        select(c.site_id, c.seq, c.kind, c.instance_id, c.at, c.data, c.src, c.skey, c.n)
        .order_by(c.at.desc(), c.src.desc(), c.skey.desc(), c.n.desc())
        .limit(limit + 1)
    )
    rows = session.execute(query).all()
    rows, last = split_page(rows, limit)
    nxt = (last.at, last.src, last.skey, last.n) if last is not None else None
    out = [(r.site_id, r.seq, r.kind, r.instance_id, r.at, r.data) for r in reversed(rows)]
    return out, nxt
