"""Instance actions at the controller: desired state, revisions, refusals with reasons."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from controller_fakes import enrolled_site, sessions, web_app
from sqlalchemy import select
from sqlalchemy.orm import Session

from cloudlet.controller.db.models import App, Instance, Site
from cloudlet.controller.services import instances, sync
from cloudlet.controller.services.decommission import decommission, finish_drains
from cloudlet.errors import ConflictError
from cloudlet.schemas import InstanceAction, InstanceCreate

A = InstanceAction


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    maker = sessions(tmp_path)
    with maker.begin() as s:
        enrolled_site(s)
        web_app(s)
    s = maker()
    yield s
    s.close()


def _create(session: Session, name: str = "w") -> Instance:
    row, _ = instances.create_instance(
        session, "admin", InstanceCreate(app="web", site="lyon", name=name), grace_s=30
    )
    session.flush()
    return row


def _as_vm(session: Session) -> None:
    app = session.scalar(select(App).where(App.name == "web"))
    assert app is not None
    app.components = [{"name": "main", "kind": "vm", "image": "b" * 64, "guest_port": 80}]
    session.flush()


def _revision(session: Session) -> int:
    return session.scalar(select(Site.revision).where(Site.name == "lyon"))


def test_each_action_moves_desired_state_and_reaches_the_site(session: Session) -> None:
    _as_vm(session)
    row = _create(session)
    steps = [
        (A.SUSPEND, "suspended"),
        (A.RESUME, "running"),
        (A.STOP, "stopped"),
        (A.START, "running"),
        (A.RESTART, "running"),
    ]
    for action, desired in steps:
        before = _revision(session)
        instances.act(session, row, action)
        assert row.desired_state == desired
        assert row.revision == _revision(session) == before + 1
        doc = sync.desired_doc(session, session.get_one(Site, row.site_id), before)
        assert [(i.id, i.desired_state.value) for i in doc.instances] == [(row.id, desired)]
    assert row.restarts == 1
    assert (
        sync.desired_doc(session, session.get_one(Site, row.site_id), 0).instances[0].restarts == 1
    )


def test_asking_for_the_current_state_changes_nothing_but_restart_always_restarts(
    session: Session,
) -> None:
    row = _create(session)
    before = _revision(session)
    instances.act(session, row, A.START)
    instances.act(session, row, A.RESUME)
    assert _revision(session) == before
    instances.act(session, row, A.RESTART)
    instances.act(session, row, A.RESTART)
    assert (row.restarts, _revision(session)) == (2, before + 2)


def test_refusals_say_why(session: Session) -> None:
    row = _create(session)
    with pytest.raises(ConflictError, match=r"cannot be suspended: its component\(s\) main run"):
        instances.act(session, row, A.SUSPEND)
    instances.act(session, row, A.STOP)
    with pytest.raises(ConflictError, match="stopped, not suspended: start it instead"):
        instances.act(session, row, A.RESUME)
    instances.delete_instance(session, row)
    with pytest.raises(ConflictError, match="being deleted"):
        instances.act(session, row, A.START)


def test_a_draining_site_runs_nothing_new_and_finishes_when_its_instances_are_gone(
    session: Session,
) -> None:
    row = _create(session)
    other = _create(session, "w2")
    site = session.get_one(Site, row.site_id)
    assert decommission(session, site).state == "draining"
    assert site.credential_hash is not None  # the agent must still report the removals
    assert {row.desired_state, other.desired_state} == {"deleted"}
    assert "being decommissioned" in (row.reason or "")
    with pytest.raises(ConflictError, match="'lyon' is draining"):
        _create(session, "w3")
    assert finish_drains(session) == []  # the tombstones wait for the agent's report
    session.delete(row)
    session.delete(other)  # as purge_tombstones does once the agent reported them deleted
    session.flush()
    assert finish_drains(session) == [site.id]
    assert site.state == "decommissioned" and site.credential_hash is None
