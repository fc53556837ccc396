"""Metering: usage records stored once and cut at hours, the price sheet, the report's
arithmetic (a record crossing a bound split at it, exact decimals, late records), CSV."""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from controller_fakes import enrolled_site, sessions, web_app
from fastapi import FastAPI, Request
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cloudlet.cli.usage import parse_bound, report_csv
from cloudlet.controller.api._blob_response import blob_response
from cloudlet.controller.blobs import FilesystemBlobStore
from cloudlet.controller.db.models import UsageRecord
from cloudlet.controller.services import artifact_fetches, instances, prices, sync
from cloudlet.controller.services._metering import (
    Prices,
    Quantities,
    share_in,
    split_hours,
)
from cloudlet.controller.services.fleet import get_site
from cloudlet.controller.services.usage_report import build_report
from cloudlet.errors import InvalidInputError
from cloudlet.schemas import AgentReport, InstanceCreate
from cloudlet.schemas.metering import PricePlanSet

T0 = datetime(2026, 12, 1, 0, 0, tzinfo=UTC)
H = timedelta(hours=1)


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    maker = sessions(tmp_path)
    with maker.begin() as s:
        enrolled_site(s)
        web_app(s)  # 1 vCPU (the default), 64 MiB
    s = maker()
    yield s
    s.close()


def _instance(session: Session, name: str = "a") -> str:
    row, _ = instances.create_instance(
        session, "admin", InstanceCreate(app="web", site="lyon", name=name), grace_s=30
    )
    session.flush()
    return row.id


def _usage(seq: int, instance: str, start: datetime, end: datetime, **extra: object) -> dict:
    data = {
        "instance": instance,
        "app": "web",
        "project": "admin",
        "seconds": (end - start).total_seconds(),
        "start": start.isoformat(),
        "end": end.isoformat(),
        **extra,
    }
    return {"seq": seq, "kind": "usage", "instance": instance, "at": end, "data": data}


def _send(session: Session, events: list[dict], now: datetime) -> int:
    site = get_site(session, "lyon")
    assert site is not None
    session.refresh(site)
    report = AgentReport(applied_revision=0, events=events)
    acked, rejected = sync.ingest_report(session, site, report, now, max_seq_jump=1000)
    assert rejected == []
    session.flush()
    return acked


def _rows(session: Session) -> list[UsageRecord]:
    return list(session.scalars(select(UsageRecord).order_by(UsageRecord.seq, UsageRecord.piece)))


# --- the arithmetic ------------------------------------------------------------------


def test_an_interval_is_cut_at_every_whole_hour_and_its_pieces_add_up() -> None:
    start, end = T0 + timedelta(minutes=50), T0 + 2 * H + timedelta(minutes=10)
    pieces = split_hours(start, end, 4_800_001)
    assert [(a, b) for a, b, _ in pieces] == [
        (start, T0 + H),
        (T0 + H, T0 + 2 * H),
        (T0 + 2 * H, end),
    ]
    assert [ms for *_, ms in pieces] == [600_000, 3_600_001, 600_000]  # rounded shares
    assert sum(ms for *_, ms in pieces) == 4_800_001
    assert split_hours(T0, T0 + H, 10) == [(T0, T0 + H, 10)]  # on the hour: one piece


def test_a_share_is_split_at_a_period_bound_and_both_sides_add_up() -> None:
    start, end = T0, T0 + timedelta(minutes=30)
    cut = T0 + timedelta(minutes=10)
    before = share_in(start, end, 1_800_000, T0 - H, cut)
    after = share_in(start, end, 1_800_000, cut, T0 + H)
    assert (before, after) == (Decimal(600_000), Decimal(1_200_000))
    assert share_in(start, end, 1_800_000, end, end + H) == 0


def test_quantities_and_costs_are_exact_decimals() -> None:
    q = Quantities()
    q.add(Decimal(3_600_000 * 3), 0.5, 1536)  # 3 h of half a vCPU and 1.5 GiB
    assert (q.instance_hours, q.vcpu_hours, q.gib_hours) == (3, Decimal("1.5"), Decimal("4.5"))
    plan = Prices(
        currency="EUR",
        free=False,
        instance_hour=Decimal("0.1"),
        vcpu_hour=Decimal("0.02"),
        gib_hour=Decimal("0.003"),
        gib_fetched=Decimal("0.05"),
    )
    # 0.3 + 0.03 + 0.0135, with no binary-float residue.
    assert plan.run_cost(q) == Decimal("0.343500")
    assert plan.fetch_cost(3 << 29) == Decimal("0.075000")  # 1.5 GiB
    free = Prices(currency="EUR", free=True, instance_hour=Decimal(9))
    assert free.run_cost(q) == 0


def test_plans_refuse_floats_and_prices_on_a_free_plan() -> None:
    with pytest.raises(ValueError, match="decimal string"):
        PricePlanSet.model_validate({"currency": "EUR", "vcpu_hour": 0.1})
    with pytest.raises(ValueError, match="free plan"):
        PricePlanSet.model_validate({"currency": "EUR", "free": True, "vcpu_hour": "1"})
    with pytest.raises(ValueError):
        PricePlanSet.model_validate({"currency": "EUR", "vcpu_hour": "1e3"})


# --- storing records -------------------------------------------------------------------


def test_a_record_sent_again_after_a_lost_ack_is_counted_once(session: Session) -> None:
    i = _instance(session)
    event = _usage(1, i, T0 + timedelta(minutes=30), T0 + timedelta(minutes=90))
    _send(session, [event], T0 + 2 * H)
    _send(session, [event, _usage(2, i, T0 + timedelta(minutes=90), T0 + 2 * H)], T0 + 3 * H)
    rows = _rows(session)
    assert [(r.seq, r.piece, r.ms) for r in rows] == [
        (1, 0, 1_800_000),
        (1, 1, 1_800_000),
        (2, 0, 1_800_000),
    ]
    # Each keeps when the site wrote it and when it first arrived here.
    assert rows[0].recorded_at == T0 + timedelta(minutes=90)
    assert rows[0].received_at == T0 + 2 * H and rows[2].received_at == T0 + 3 * H


def test_a_record_says_its_resources_and_an_older_agents_gets_the_apps(
    session: Session,
) -> None:
    i = _instance(session)
    new = _usage(1, i, T0, T0 + H, vcpus=2.0, memory_mib=4096)
    old = _usage(2, i, T0 + H, T0 + 2 * H)  # no vcpus, no memory_mib
    _send(session, [new, old], T0 + 3 * H)
    assert [(r.vcpus, r.memory_mib) for r in _rows(session)] == [(2.0, 4096), (1.0, 64)]


def test_nonsense_records_are_kept_as_events_and_not_billed(session: Session) -> None:
    i = _instance(session)
    bad = [
        {"seq": 1, "kind": "usage", "instance": i, "at": T0, "data": {"seconds": -5}},
        {"seq": 2, "kind": "usage", "instance": i, "at": T0, "data": {"seconds": "x"}},
        _usage(3, i, T0 + H, T0),  # ends before it starts
    ]
    assert _send(session, bad, T0 + H) == 3  # acknowledged: the outbox moves on
    assert session.scalar(select(func.count()).select_from(UsageRecord)) == 0


# --- the report ------------------------------------------------------------------------


def _plan(session: Session, project: str, app: str, **amounts: str) -> None:
    prices.set_plan(session, project, app, PricePlanSet(currency="EUR", **amounts))


def test_the_most_specific_plan_prices_each_line(session: Session) -> None:
    i = _instance(session)
    _send(session, [_usage(1, i, T0, T0 + 2 * H, vcpus=1.0, memory_mib=1024)], T0 + 2 * H)
    report = build_report(session, "admin", T0, T0 + 2 * H, T0 + 3 * H)
    assert report.lines[0].plan.scope == "none" and report.lines[0].cost == 0
    _plan(session, "", "", instance_hour="1")
    _plan(session, "admin", "", instance_hour="2")
    assert build_report(session, "admin", T0, T0 + 2 * H, T0 + 3 * H).lines[0].cost == 4
    _plan(session, "admin", "web", vcpu_hour="0.5", gib_hour="0.25")
    line = build_report(session, "admin", T0, T0 + 2 * H, T0 + 3 * H).lines[0]
    assert (line.plan.scope, line.cost) == ("app", Decimal("1.5"))
    assert (line.instance_hours, line.vcpu_hours, line.gib_hours) == (2, 2, 2)


def test_an_instance_spanning_the_period_bound_is_split_at_it(session: Session) -> None:
    i = _instance(session)
    start, end = T0 + timedelta(minutes=45), T0 + timedelta(minutes=105)  # 1 h across 01:00
    _send(session, [_usage(1, i, start, end, vcpus=1.0, memory_mib=1024)], end)
    _plan(session, "", "", instance_hour="1")
    first = build_report(session, "admin", T0 + timedelta(minutes=30), T0 + H, T0 + 3 * H)
    second = build_report(session, "admin", T0 + H, T0 + 2 * H, T0 + 3 * H)
    assert first.lines[0].instance_hours == Decimal("0.25")
    assert second.lines[0].instance_hours == Decimal("0.75")
    assert first.totals[0].cost + second.totals[0].cost == 1
    # A bound inside an hour piece cuts it too.
    inner = build_report(
        session, "admin", T0 + timedelta(minutes=60), T0 + timedelta(minutes=90), T0 + 3 * H
    )
    assert inner.lines[0].instance_hours == Decimal("0.5")


def test_late_records_are_listed_and_are_the_only_change_to_a_closed_period(
    session: Session,
) -> None:
    i = _instance(session)
    _plan(session, "", "", instance_hour="3")
    period = (T0, T0 + H)
    on_time = _usage(1, i, T0, T0 + timedelta(minutes=20))
    _send(session, [on_time], T0 + timedelta(minutes=20))
    first = build_report(session, "admin", *period, as_of=T0 + timedelta(minutes=70))
    assert first.closed and first.late == []
    # Made at the site during an outage, across the period's end; it arrives later.
    offline = _usage(2, i, T0 + timedelta(minutes=20), T0 + timedelta(minutes=80))
    _send(session, [offline], T0 + 2 * H)
    second = build_report(session, "admin", *period, as_of=T0 + 3 * H)
    assert [(r.seq, r.recorded_at, r.received_at) for r in second.late] == [
        (2, T0 + timedelta(minutes=80), T0 + 2 * H)
    ]
    late = second.late[0]
    assert late.instance_hours == Decimal("0.666667") and late.cost == Decimal("2.000000")
    assert second.lines[0].instance_hours - first.lines[0].instance_hours == Decimal("0.666667")
    assert second.totals[0].cost - first.totals[0].cost == late.cost
    # The first report can be taken again, exactly as it was.
    assert build_report(session, "admin", *period, as_of=T0 + timedelta(minutes=70)) == first


def test_bytes_fetched_are_priced_at_the_projects_plan(session: Session) -> None:
    site = get_site(session, "lyon")
    assert site is not None
    counters = artifact_fetches.FetchCounters()
    counters.add(("admin", site.id, "overlay", "ov1"), 1 << 29)
    counters.add(("admin", site.id, "overlay", "ov1"), 1 << 29)
    counters.add(("other", site.id, "image", "im1"), 999)
    since, counts = counters.take()
    assert since is not None and counters.take() == (None, {})
    artifact_fetches.write(session, since, counts, T0 + timedelta(minutes=5))
    _plan(session, "admin", "", gib_fetched="0.08")
    _plan(session, "admin", "web", gib_fetched="100")  # apps do not price fetches
    report = build_report(session, "admin", T0, T0 + H, T0 + 2 * H)
    [line] = report.fetches
    assert (line.site, line.kind, line.artifact, line.bytes) == ("lyon", "overlay", "ov1", 1 << 30)
    assert (line.plan.scope, line.cost) == ("project", Decimal("0.08"))
    assert build_report(session, "admin", T0 + H, T0 + 2 * H, T0 + 2 * H).fetches == []


def test_the_csv_has_a_row_per_line_total_and_late_record(session: Session) -> None:
    i = _instance(session)
    _plan(session, "", "", instance_hour="1.5")
    _send(session, [_usage(1, i, T0, T0 + 2 * H)], T0 + 3 * H)
    data = build_report(session, "admin", T0, T0 + H, T0 + 4 * H).model_dump(
        mode="json", by_alias=True
    )
    rows = list(csv.DictReader(io.StringIO(report_csv(data))))
    assert [(r["section"], r["app"], r["site"], r["instance_hours"], r["cost"]) for r in rows] == [
        ("run", "web", "lyon", "1.000000", "1.500000"),
        ("total", "", "", "", "1.500000"),
        ("late", "web", "lyon", "1.000000", "1.500000"),
    ]
    assert rows[0]["currency"] == "EUR" and rows[2]["seq"] == "1"


def test_report_bounds_take_dates_as_midnight_utc() -> None:
    assert parse_bound("2026-12-01", "--from") == "2026-12-01T00:00:00+00:00"
    assert parse_bound("2026-12-01T08:00:00Z", "--to") == "2026-12-01T08:00:00+00:00"
    with pytest.raises(InvalidInputError, match="--from"):
        parse_bound("yesterday", "--from")


# --- bytes sent ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "sent"),
    [
        ({}, 300_000),
        ({"range": "bytes=1000-1999"}, 1000),
        ({"range": "bytes=-10"}, 10),
        ({"range": "bytes=400000-"}, 0),  # 416: nothing sent
    ],
)
def test_the_bytes_a_blob_response_sends_are_counted_ranges_included(
    tmp_path: Path, headers: dict[str, str], sent: int
) -> None:
    blob = tmp_path / "b"
    blob.write_bytes(b"x" * 300_000)
    store = FilesystemBlobStore(tmp_path / "store")
    store.put("k", blob)
    counters = artifact_fetches.FetchCounters()
    key = ("p", "site", "overlay", "k")
    app = FastAPI()

    @app.get("/blob")
    def serve(request: Request):  # type: ignore[no-untyped-def]
        return blob_response(request, store, "k", 300_000, "k", counters.counter(key))

    async def fetch() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://c") as client:
            return await client.get("/blob", headers=headers)

    answer = asyncio.run(fetch())
    assert len(answer.content) == sent
    assert counters.take()[1] == ({key: sent} if sent else {})
