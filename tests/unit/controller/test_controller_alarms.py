"""Alarms: raised once, cleared once, history kept; site.offline with its clear hold."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from controller_fakes import enrolled_site, sessions
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from cloudlet.controller.db.models import Alarm, Site
from cloudlet.controller.services import alarms
from cloudlet.schemas.alarms import AlarmSeverity, AlarmSignal, AlarmSource

T0 = datetime(2026, 12, 3, 7, 0, tzinfo=UTC)


@pytest.fixture
def maker(tmp_path: Path) -> sessionmaker[Session]:
    maker = sessions(tmp_path)
    with maker.begin() as s:
        enrolled_site(s, "lyon")
        enrolled_site(s, "nice")
    return maker


def _site(session: Session, name: str = "lyon") -> Site:
    return session.scalars(select(Site).where(Site.name == name)).one()


def _raise(session: Session, entity: str = "site=lyon", at: datetime = T0) -> Alarm | None:
    return alarms.raise_alarm(
        session, "site.disk-low", entity, AlarmSeverity.MINOR, site=_site(session), at=at
    )


def _count(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(Alarm))


def test_raising_an_active_alarm_twice_keeps_one_row(maker: sessionmaker[Session]) -> None:
    with maker.begin() as s:
        first = _raise(s)
        again = _raise(s, at=T0 + timedelta(seconds=5))
        assert first is not None and again is None
        assert _count(s) == 1
        assert first.raised_at == T0 and first.cleared_at is None
        assert [n["state"] for n in alarms.take_notices(s)] == ["raise"]


def test_a_clear_clears_once_and_the_history_is_kept(maker: sessionmaker[Session]) -> None:
    with maker.begin() as s:
        _raise(s)
        done = alarms.clear_alarm(s, "site.disk-low", "site=lyon", at=T0 + timedelta(seconds=9))
        assert done is not None and done.cleared_at == T0 + timedelta(seconds=9)
        assert alarms.clear_alarm(s, "site.disk-low", "site=lyon") is None
        # Raised again later: a second row, the first kept as history.
        assert _raise(s, at=T0 + timedelta(seconds=20)) is not None
        rows = alarms.list_alarms(s)
        assert [(a.raised_at, a.active) for a in rows] == [
            (T0 + timedelta(seconds=20), True),
            (T0, False),
        ]
        assert [a.raised_at for a in alarms.list_alarms(s, active=True)] == [
            T0 + timedelta(seconds=20)
        ]
        assert [n["state"] for n in alarms.take_notices(s)] == ["raise", "clear", "raise"]


def test_one_active_alarm_per_entity_and_filters(maker: sessionmaker[Session]) -> None:
    with maker.begin() as s:
        _raise(s, "site=lyon")
        _raise(s, "site=lyon/instance=abc")
        nice = alarms.raise_alarm(
            s, "site.disk-low", "site=nice", AlarmSeverity.MINOR, site=_site(s, "nice"),
            project="admin", source=AlarmSource.SITE,
        )  # fmt: skip
        assert nice is not None
        assert _count(s) == 3
        assert {a.entity for a in alarms.list_alarms(s, site=_site(s))} == {
            "site=lyon",
            "site=lyon/instance=abc",
        }
        assert [a.site for a in alarms.list_alarms(s, project="admin")] == ["nice"]


def test_clearing_what_was_never_raised_changes_nothing(maker: sessionmaker[Session]) -> None:
    with maker.begin() as s:
        assert alarms.clear_alarm(s, "site.offline", "site=lyon") is None
        assert _count(s) == 0 and alarms.take_notices(s) == []


def _online_since(session: Session, name: str, seconds_ago: float) -> None:
    since = alarms.utcnow() - timedelta(seconds=seconds_ago)
    session.execute(
        update(Site)
        .where(Site.name == name)
        .values(availability="online", availability_changed_at=since)
    )


def test_site_offline_clears_only_after_the_hold(maker: sessionmaker[Session]) -> None:
    with maker.begin() as s:
        lyon = _site(s).id
        s.execute(update(Site).where(Site.id == lyon).values(availability="offline"))
        alarms.judge_site_alarms(s, [lyon], grace_s=2, clear_hold_s=10)
        # A flap: back online, offline again, online again, each shorter than the hold.
        for _ in range(3):
            _online_since(s, "lyon", 1)
            alarms.judge_site_alarms(s, [], grace_s=2, clear_hold_s=10)
            s.execute(update(Site).where(Site.id == lyon).values(availability="offline"))
            alarms.judge_site_alarms(s, [lyon], grace_s=2, clear_hold_s=10)
        [alarm] = alarms.list_alarms(s)
        assert alarm.active and alarm.alarm_id == "site.offline" and alarm.entity == "site=lyon"
        # Online for longer than the hold: cleared, once.
        _online_since(s, "lyon", 11)
        alarms.judge_site_alarms(s, [], grace_s=2, clear_hold_s=10)
        alarms.judge_site_alarms(s, [], grace_s=2, clear_hold_s=10)
        [alarm] = alarms.list_alarms(s)
        assert not alarm.active
        assert [n["state"] for n in alarms.take_notices(s)] == ["raise", "clear"]


def test_the_webhook_payload_names_the_site(maker: sessionmaker[Session]) -> None:
    with maker.begin() as s:
        _raise(s)
        alarms.clear_alarm(s, "site.disk-low", "site=lyon", at=T0 + timedelta(seconds=1))
        raised, cleared = alarms.take_notices(s)
    assert raised == {
        "alarm_id": "site.disk-low", "severity": "minor", "entity": "site=lyon", "site": "lyon",
        "state": "raise", "raised_at": "2026-12-03T07:00:00Z", "cleared_at": None, "reason": None,
    }  # fmt: skip
    assert cleared["state"] == "clear"
    assert cleared["cleared_at"] == "2026-12-03T07:00:01Z"


def test_alarm_signals_follow_the_contract() -> None:
    ok = AlarmSignal.parse({"alarm_id": "instance.crash-loop", "state": "raise", "x": 1})
    assert ok is not None and ok.severity is AlarmSeverity.MAJOR
    assert AlarmSignal.parse({"severity": "warning", "message": "outbox over its cap"}) is None
    assert AlarmSignal.parse({"alarm_id": "BAD ID", "state": "raise"}) is None
    assert AlarmSignal.parse({"alarm_id": "a.b", "state": "flap"}) is None


def test_sync_lag_is_raised_for_an_online_site_behind_for_long_and_cleared_in_sync(
    maker: sessionmaker[Session],
) -> None:
    with maker.begin() as s:
        long_ago = datetime.now(UTC) - timedelta(seconds=600)
        s.execute(
            update(Site)
            .where(Site.name.in_(["lyon", "nice"]))
            .values(revision=5, applied_revision=3, revision_changed_at=long_ago)
        )
        # nice changed just now: behind, but not for long
        s.execute(update(Site).where(Site.name == "nice").values(revision_changed_at=T0.now(UTC)))
        alarms.judge_sync_lag(s, lag_s=120)
        alarms.judge_sync_lag(s, lag_s=120)  # once, not once a pass
        rows = s.scalars(select(Alarm).where(Alarm.alarm_id == "site.sync-lag")).all()
        assert [(a.entity, a.cleared_at) for a in rows] == [("site=lyon", None)]
        assert "applied revision 3 of 5" in (rows[0].reason or "")
        s.execute(update(Site).where(Site.name == "lyon").values(applied_revision=5))
        alarms.judge_sync_lag(s, lag_s=120)
        (cleared,) = s.scalars(select(Alarm).where(Alarm.alarm_id == "site.sync-lag")).all()
        assert cleared.cleared_at is not None


def test_a_fleet_cut_off_together_raises_and_clears_one_alarm_per_site(
    maker: sessionmaker[Session],
) -> None:
    with maker.begin() as s:
        for n in range(300):
            enrolled_site(s, f"edge-{n}")
        ids = list(s.scalars(select(Site.id)))
        s.execute(update(Site).values(availability="offline"))
        alarms.judge_site_alarms(s, ids, grace_s=2, clear_hold_s=10)
        alarms.judge_site_alarms(s, ids, grace_s=2, clear_hold_s=10)  # judged again: no-op
        raised = alarms.take_notices(s)
        assert len(raised) == len(ids) == 302
        assert {n["entity"] for n in raised} == {f"site={n}" for n in s.scalars(select(Site.name))}
        assert all(n["site"] and n["reason"].startswith("no report since") for n in raised)

        s.execute(update(Site).values(availability="online", availability_changed_at=T0))
        alarms.judge_site_alarms(s, [], grace_s=2, clear_hold_s=10)
        cleared = alarms.take_notices(s)
        assert len(cleared) == 302 and {n["state"] for n in cleared} == {"clear"}
        assert all(a.cleared_at is not None for a in s.scalars(select(Alarm)))
        assert not any(a.active for a in alarms.list_alarms(s, active=True))
