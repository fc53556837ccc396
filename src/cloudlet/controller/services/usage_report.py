"""A project's usage report over a period: quantities per app and site, bytes fetched,
their cost under the price sheet, and the records that arrived after the period.

What a report counts is fixed by two times: the period (``since``..``until``, the
latter excluded) and ``as_of``, the moment the controller's knowledge is taken at
(records that arrived by then). So a report can be taken again exactly as it was,
and two reports of one closed period differ by the late records that arrived
between their ``as_of``, which both list.

Pieces wholly inside the period are summed by the database, grouped by app, site
and resources; only the few pieces crossing a bound (each piece lies within one
UTC hour) are cut here.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from cloudlet.controller.db.models import ArtifactFetch, Image, Overlay, UsageRecord
from cloudlet.controller.services import fleet
from cloudlet.controller.services._metering import (
    HOUR,
    ZERO,
    Quantities,
    gib,
    rounded,
    share_in,
)
from cloudlet.controller.services.prices import Sheet
from cloudlet.schemas.metering import (
    FetchLine,
    LateRecord,
    Total,
    UsageLine,
    UsageReport,
)

#: Late records listed at most (all of them are counted in the lines).
MAX_LATE = 1000

UR = UsageRecord
#: The columns of a piece read one by one (plain rows: no ORM objects to build).
_PIECE = (
    UR.site_id, UR.seq, UR.app, UR.instance_id, UR.start_at, UR.end_at, UR.ms, UR.vcpus,
    UR.memory_mib, UR.recorded_at, UR.received_at,
)  # fmt: skip


@dataclass
class _Late:
    app: str
    instance: str | None
    recorded_at: datetime
    received_at: datetime
    q: Quantities = field(default_factory=Quantities)


def _overlapping(project: str, since: datetime, until: datetime, as_of: datetime) -> Any:
    # Pieces span at most an hour, so the index on (project, start_at) bounds the scan.
    return and_(
        UR.project == project,
        UR.start_at >= since - HOUR,
        UR.start_at < until,
        or_(UR.end_at > since, and_(UR.end_at == UR.start_at, UR.start_at >= since)),
        UR.received_at <= as_of,
    )


def _run_lines(
    session: Session, project: str, since: datetime, until: datetime, as_of: datetime
) -> tuple[dict[tuple[str, str], Quantities], dict[tuple[str, int], _Late], bool]:
    lines: dict[tuple[str, str], Quantities] = defaultdict(Quantities)
    inside = and_(UR.start_at >= since, UR.end_at <= until, UR.start_at < until)
    whole = session.execute(
        select(UR.app, UR.site_id, UR.vcpus, UR.memory_mib, func.sum(UR.ms))
        .where(_overlapping(project, since, until, as_of), inside)
        .group_by(UR.app, UR.site_id, UR.vcpus, UR.memory_mib)
    )
    for app, site_id, vcpus, memory, ms in whole:
        lines[(app, site_id)].add(Decimal(int(ms)), vcpus, memory)
    edges = session.execute(
        select(*_PIECE).where(_overlapping(project, since, until, as_of), ~inside)
    )
    for r in edges:
        share = share_in(r.start_at, r.end_at, r.ms, since, until)
        if share:
            lines[(r.app, r.site_id)].add(share, r.vcpus, r.memory_mib)
    late: dict[tuple[str, int], _Late] = {}
    pieces = session.execute(
        select(*_PIECE)
        .where(_overlapping(project, since, until, as_of), UR.received_at >= until)
        .order_by(UR.received_at, UR.site_id, UR.seq, UR.piece)
        .limit(MAX_LATE * 4 + 1)
    ).all()
    truncated = len(pieces) > MAX_LATE * 4
    for r in pieces[: MAX_LATE * 4]:
        share = share_in(r.start_at, r.end_at, r.ms, since, until)
        if not share:
            continue
        key = (r.site_id, r.seq)
        if key not in late:
            if len(late) == MAX_LATE:
                truncated = True
                break
            late[key] = _Late(r.app, r.instance_id, r.recorded_at, r.received_at)
        late[key].q.add(share, r.vcpus, r.memory_mib)
    return lines, late, truncated


def _fetch_rows(
    session: Session, project: str, since: datetime, until: datetime, as_of: datetime
) -> list[tuple[str, str, str, int]]:
    rows = session.execute(
        select(
            ArtifactFetch.site_id,
            ArtifactFetch.kind,
            ArtifactFetch.artifact,
            func.sum(ArtifactFetch.bytes),
        )
        .where(
            ArtifactFetch.project == project,
            ArtifactFetch.at >= since,
            ArtifactFetch.at < until,
            ArtifactFetch.at <= as_of,
        )
        .group_by(ArtifactFetch.site_id, ArtifactFetch.kind, ArtifactFetch.artifact)
    )
    return [(s, k, a, int(n)) for s, k, a, n in rows]


def _artifact_names(session: Session, ids: set[str]) -> dict[str, str]:
    if not ids:
        return {}
    images = select(Image.digest, Image.name).where(Image.digest.in_(ids))
    overlays = select(Overlay.id, Overlay.name).where(Overlay.id.in_(ids))
    names = dict(((d, n) for d, n in session.execute(images)))
    names.update(((i, n) for i, n in session.execute(overlays)))
    return names


def build_report(
    session: Session, project: str, since: datetime, until: datetime, as_of: datetime
) -> UsageReport:
    """The report of ``project`` over ``since``..``until`` as known at ``as_of``."""
    sheet = Sheet(session, project)
    lines, late, truncated = _run_lines(session, project, since, until, as_of)
    fetches = _fetch_rows(session, project, since, until, as_of)
    site_ids = {s for _, s in lines} | {s for s, *_ in fetches} | {s for s, _ in late}
    sites = fleet.site_names(session, site_ids)
    names = _artifact_names(session, {a for _, _, a, _ in fetches})
    totals: dict[str | None, Decimal] = defaultdict(lambda: ZERO)
    usage_lines = []

    def site(site_id: str) -> str:
        return sites.get(site_id, site_id)

    for (app, site_id), q in sorted(lines.items(), key=lambda kv: (kv[0][0], site(kv[0][1]))):
        ref, prices = sheet.prices(app)
        cost = prices.run_cost(q)
        totals[ref.currency] += cost
        usage_lines.append(
            UsageLine(
                app=app,
                site=site(site_id),
                instance_hours=rounded(q.instance_hours),
                vcpu_hours=rounded(q.vcpu_hours),
                gib_hours=rounded(q.gib_hours),
                plan=ref,
                cost=cost,
            )
        )
    fetch_ref, fetch_prices = sheet.prices(None)
    fetch_lines = []
    for site_id, kind, artifact, nbytes in sorted(fetches, key=lambda f: (site(f[0]), *f[1:3])):
        cost = fetch_prices.fetch_cost(nbytes)
        totals[fetch_ref.currency] += cost
        fetch_lines.append(
            FetchLine(
                site=site(site_id),
                kind=kind,
                artifact=artifact,
                name=names.get(artifact),
                bytes=nbytes,
                gib=gib(nbytes),
                plan=fetch_ref,
                cost=cost,
            )
        )
    late_records = []
    for (site_id, seq), entry in late.items():
        ref, prices = sheet.prices(entry.app)
        late_records.append(
            LateRecord(
                site=site(site_id),
                seq=seq,
                app=entry.app,
                instance=entry.instance,
                recorded_at=entry.recorded_at,
                received_at=entry.received_at,
                instance_hours=rounded(entry.q.instance_hours),
                vcpu_hours=rounded(entry.q.vcpu_hours),
                gib_hours=rounded(entry.q.gib_hours),
                currency=ref.currency,
                cost=prices.run_cost(entry.q),
            )
        )
    return UsageReport(
        project=project,
        from_=since,
        to=until,
        as_of=as_of,
        closed=until <= as_of,
        lines=usage_lines,
        fetches=fetch_lines,
        totals=[Total(currency=c, cost=totals[c]) for c in sorted(totals, key=lambda c: c or "")],
        late=late_records,
        late_truncated=truncated,
    )
