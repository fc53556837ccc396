"""The controller's side of the sync protocol: cursors, tombstones, idempotent events."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from controller_fakes import enrolled_site, sessions, web_app
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cloudlet.controller.db.models import Event, InstanceDeparture
from cloudlet.controller.services import instances, sync
from cloudlet.controller.services.auth import SiteBrief
from cloudlet.schemas import AgentReport, InstanceCreate

NOW = datetime(2026, 11, 21, 5, 0, tzinfo=UTC)


@pytest.fixture
def session(tmp_path: Path) -> Session:
    maker = sessions(tmp_path)
    with maker.begin() as s:
        enrolled_site(s)
        web_app(s)
    s = maker()
    yield s
    s.close()


def _create(session: Session, name: str) -> str:
    row, _ = instances.create_instance(
        session, "admin", InstanceCreate(app="web", site="lyon", name=name), grace_s=30
    )
    session.flush()
    return row.id


def _site(session: Session):  # type: ignore[no-untyped-def]
    from cloudlet.controller.services.fleet import get_site

    site = get_site(session, "lyon")
    session.refresh(site)
    return site


def _ingest(session: Session, site, report: AgentReport, jump: int = 1000):  # type: ignore[no-untyped-def]
    return sync.ingest_report(session, site, report, NOW, max_seq_jump=jump)


def test_cursor_zero_gets_a_snapshot_of_live_instances(session: Session) -> None:
    a, b = _create(session, "a"), _create(session, "b")
    instances.delete_instance(session, instances.get_instance(session, "admin", b))
    doc = sync.desired_doc(session, _site(session), since=0)
    assert doc.full and doc.revision == 4  # sites start at revision 1
    assert [i.id for i in doc.instances] == [a]


def test_a_fresh_sites_first_pull_moves_the_agents_cursor(session: Session) -> None:
    doc = sync.desired_doc(session, _site(session), since=0)
    assert doc.full and doc.instances == [] and doc.revision >= 1


def test_delta_carries_changes_and_deletions_after_the_cursor(session: Session) -> None:
    a = _create(session, "a")
    b = _create(session, "b")
    instances.delete_instance(session, instances.get_instance(session, "admin", a))
    doc = sync.desired_doc(session, _site(session), since=2)
    assert not doc.full and doc.since == 2 and doc.revision == 4
    assert [(i.id, i.desired_state.value, i.revision) for i in doc.instances] == [
        (b, "running", 3),
        (a, "deleted", 4),
    ]
    assert sync.desired_doc(session, _site(session), since=4).instances == []


def test_cursor_older_than_a_purged_tombstone_gets_a_snapshot(session: Session) -> None:
    a = _create(session, "a")
    _create(session, "b")
    instances.delete_instance(session, instances.get_instance(session, "admin", a))
    site = _site(session)
    # The agent applied revision 4 and no longer runs `a`: its tombstone goes.
    _ingest(session, site, AgentReport(applied_revision=4, instances=[]))
    site = _site(session)
    assert site.tombstone_floor == 4
    assert sync.desired_doc(session, site, since=2).full  # would miss the deletion of `a`
    assert not sync.desired_doc(session, site, since=4).full


def test_cursor_ahead_of_the_controller_gets_a_snapshot(session: Session) -> None:
    _create(session, "a")
    doc = sync.desired_doc(session, _site(session), since=99)  # e.g. DB restored from backup
    assert doc.full and len(doc.instances) == 1


def test_events_are_idempotent_and_acks_never_go_back(session: Session) -> None:
    site = _site(session)

    def report(*seqs: int) -> int:
        events = [{"seq": s, "kind": "usage", "at": NOW, "data": {"seconds": 1}} for s in seqs]
        acked, rejected = _ingest(
            session, _site(session), AgentReport(applied_revision=0, events=events)
        )
        assert rejected == []
        return acked

    assert report(1, 2, 3) == 3
    assert report(2, 3, 4) == 4  # a re-sent batch after a lost ack, plus one new
    assert report(1) == 4  # a very late duplicate does not move the ack back
    count = session.scalar(select(func.count()).select_from(Event).where(Event.site_id == site.id))
    assert count == 4


def test_applied_revision_is_capped_at_the_real_revision(session: Session) -> None:
    _create(session, "a")
    _ingest(session, _site(session), AgentReport(applied_revision=50))
    assert _site(session).applied_revision == 2


def _usage(seq: int, instance: str | None, **data: object) -> dict[str, object]:
    return {"seq": seq, "kind": "usage", "instance": instance, "at": NOW, "data": data}


def _stored(session: Session) -> list[tuple[str, int, str | None]]:
    rows = session.execute(select(Event.site_id, Event.seq, Event.project).order_by(Event.seq))
    return list(rows)


def test_a_site_cannot_write_events_about_another_sites_instance(session: Session) -> None:
    theirs = _create(session, "theirs")  # placed at lyon
    paris = enrolled_site(session, "paris")
    session.flush()
    report = AgentReport(
        applied_revision=0, events=[_usage(900, theirs, seconds=999_999, project="admin")]
    )
    acked, rejected = _ingest(session, paris, report)
    assert [(r.seq, "not placed at this site" in r.reason) for r in rejected] == [(900, True)]
    assert acked == 900  # refused for good: the agent drops it
    assert _stored(session) == []


def test_an_event_is_billed_to_its_instances_project_not_the_sites_claim(
    session: Session,
) -> None:
    mine = _create(session, "mine")
    good = _usage(1, mine, seconds=60)  # no project claimed: ours to say
    forged = _usage(2, mine, seconds=60, project="someone-else")
    acked, rejected = _ingest(
        session, _site(session), AgentReport(applied_revision=0, events=[good, forged])
    )
    assert acked == 2 and [r.seq for r in rejected] == [2]
    assert [(seq, project) for _, seq, project in _stored(session)] == [(1, "admin")]


def test_sequence_jumps_past_the_bound_are_refused_and_not_acknowledged(
    session: Session,
) -> None:
    site = _site(session)
    acked, rejected = _ingest(
        session, site, AgentReport(applied_revision=0, events=[_usage(5, None)])
    )
    assert acked == 5 and rejected == []
    far = AgentReport(applied_revision=0, events=[_usage(6, None), _usage(5 + 1001, None)])
    acked, rejected = _ingest(session, _site(session), far, jump=1000)
    assert acked == 6, "a refused jump must not move the acknowledged sequence"
    assert [r.seq for r in rejected] == [1006] and "past the last acknowledged" in rejected[
        0
    ].reason
    assert _site(session).acked_seq == 6


def test_events_about_an_unknown_instance_another_site_reported_are_refused(
    session: Session,
) -> None:
    paris = enrolled_site(session, "paris")
    session.flush()
    # paris ran a site-origin instance the controller has no row for (yet, or any more)
    _, rejected = _ingest(
        session, paris, AgentReport(applied_revision=0, events=[_usage(1, "local-1")])
    )
    assert rejected == []
    _, rejected = _ingest(
        session, _site(session), AgentReport(applied_revision=0, events=[_usage(1, "local-1")])
    )
    assert [r.seq for r in rejected] == [1] and "another site" in rejected[0].reason
    assert [seq for _, seq, _ in _stored(session)] == [1]


def test_a_site_an_instance_moved_away_from_still_reports_its_old_copy(
    session: Session,
) -> None:
    from cloudlet.controller.db.models import Handoff, Instance

    moved = _create(session, "moved")
    paris = enrolled_site(session, "paris")
    instance = session.get_one(Instance, moved)
    lyon_id = instance.site_id
    instance.site_id = paris.id  # handed off to paris
    session.add(
        Handoff(
            id="h1",
            instance_id=moved,
            project="admin",
            source_site_id=lyon_id,
            dest_site_id=paris.id,
            kind="process",
            phase="done",
            reason="test",
            epoch=1,
            bytes=0,
            phases={},
            created_at=NOW,
            finished_at=NOW,
        )
    )
    session.flush()
    # lyon's usage of its copy, recorded during a cut, arrives after the move
    _, rejected = _ingest(
        session, _site(session), AgentReport(applied_revision=0, events=[_usage(7, moved)])
    )
    assert rejected == []
    nice = enrolled_site(session, "nice")  # never held it
    session.flush()
    _, rejected = _ingest(session, nice, AgentReport(applied_revision=0, events=[_usage(1, moved)]))
    assert [r.seq for r in rejected] == [1]


def test_a_heartbeat_moves_the_applied_revision_in_its_batch_forward_only(
    session: Session,
) -> None:
    a = _create(session, "a")
    site = _site(session)
    session.add(
        InstanceDeparture(instance_id=a, site_id=site.id, epoch=2, revision=2, created_at=NOW)
    )
    session.flush()
    brief = SiteBrief(site.id, site.revision, site.applied_revision, site.acked_seq)
    ahead = AgentReport(applied_revision=site.revision + 50)
    assert sync.is_heartbeat(ahead)
    values = sync.heartbeat_values(ahead, datetime.now(UTC), brief)
    assert values["applied_revision"] == site.revision, "capped at the real revision"
    sync.write_heartbeats(session.connection(), {site.id: values})
    assert _site(session).applied_revision == site.revision
    assert session.scalar(select(func.count()).select_from(InstanceDeparture)) == 0

    # A heartbeat judged against a stale brief, with an older applied revision,
    # written later: it does not move the applied revision back.
    stale = sync.heartbeat_values(
        AgentReport(applied_revision=1), NOW, brief._replace(applied_revision=0)
    )
    stale["last_seen"] = datetime(2026, 11, 21, 5, 1, tzinfo=UTC)
    sync.write_heartbeats(session.connection(), {site.id: stale})
    assert _site(session).applied_revision == site.revision
    assert not sync.is_heartbeat(
        AgentReport.model_validate({"applied_revision": 1, "events": [_usage(1, None)]})
    )
