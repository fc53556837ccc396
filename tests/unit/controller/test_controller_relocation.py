"""The relocation loop's decisions over a real (SQLite) database: rebalancing with its
hysteresis, and what the sites an instance moves between see in their desired state."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from controller_fakes import enrolled_site, sessions, web_app
from sqlalchemy.orm import Session

from cloudlet.controller.services import instances, mobility, sync
from cloudlet.controller.services._util import utcnow
from cloudlet.controller.services.fleet import get_site
from cloudlet.controller.services.relocation import RelocationMemory, relocation_pass
from cloudlet.schemas import DesiredState, InstanceCreate
from cloudlet.settings import MobilitySettings


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    maker = sessions(tmp_path)
    with maker.begin() as s:
        for name in ("lyon", "paris"):
            site = enrolled_site(s, name)
            site.last_seen = utcnow()
            site.utilization = {"cpu": 0.1, "memory": 0.1, "disk": 0.1}
        web_app(s)
    s = maker()
    yield s
    s.close()


def _instance(session: Session, name: str, site: str = "lyon") -> str:
    row, _ = instances.create_instance(
        session, "admin", InstanceCreate(app="web", site=site, name=name), grace_s=30
    )
    session.flush()
    return row.id


def _hot(session: Session, name: str, cpu: float) -> None:
    site = get_site(session, name)
    assert site is not None
    site.utilization = {"cpu": cpu, "memory": 0.1, "disk": 0.1}
    site.last_seen = utcnow()
    session.flush()


def test_an_overloaded_site_sheds_one_instance_per_pass_without_ping_pong(
    session: Session,
) -> None:
    first, second = _instance(session, "a"), _instance(session, "b")
    settings = MobilitySettings(rebalance=True, overload=0.8, overload_for_s=0, min_dwell_s=3600)
    memory = RelocationMemory()
    _hot(session, "lyon", 0.95)
    result = relocation_pass(session, 30, settings, memory)
    assert len(result.moves) == 1 and result.moves[0][1] == "rebalance: site overloaded"
    moved = result.moves[0][0]
    assert moved == second  # the newest goes first
    handoff = mobility.open_handoff(session, moved)
    assert handoff is not None and handoff.kind == "process"
    assert handoff.dest_site_id == get_site(session, "paris").id  # type: ignore[union-attr]
    # The move is under way: the next pass does not pile another one on.
    again = relocation_pass(session, 30, settings, memory)
    assert again.moves == []
    # Paris is hot now and lyon cooled: but the moved instance dwells (hysteresis) ...
    moved_row = mobility.state_received(session, handoff, 0)
    mobility.note_running(session, moved_row)
    assert handoff.phase == "done" and mobility.open_handoff(session, moved) is None
    _hot(session, "lyon", 0.1)
    _hot(session, "paris", 0.95)
    assert relocation_pass(session, 30, settings, memory).moves == []
    # ... and a site below the threshold sheds nothing.
    _hot(session, "paris", 0.5)
    assert relocation_pass(session, 30, settings, memory).moves == []
    assert first not in {m for m, _ in result.moves}


def test_overload_must_last_before_a_site_sheds(session: Session) -> None:
    _instance(session, "a")
    settings = MobilitySettings(rebalance=True, overload=0.8, overload_for_s=3600, min_dwell_s=0)
    _hot(session, "lyon", 0.95)
    assert relocation_pass(session, 30, settings, RelocationMemory()).moves == []


def test_the_site_left_gets_a_departure_at_the_new_epoch(session: Session) -> None:
    instance_id = _instance(session, "a")
    lyon, paris = get_site(session, "lyon"), get_site(session, "paris")
    assert lyon is not None and paris is not None
    since = lyon.revision
    row = instances.get_instance(session, "admin", "a")
    assert row is not None
    handoff = mobility.request_move(session, row, paris, "test")
    # The source hears the order first ...
    doc = sync.desired_doc(session, lyon, since)
    (entry,) = doc.instances
    assert entry.handoff is not None and entry.handoff.role.value == "source"
    mobility.state_received(session, handoff, 10)
    # ... then, once the state arrived, that the instance left (deleted, epoch 1) ...
    doc = sync.desired_doc(session, lyon, doc.revision)
    (gone,) = doc.instances
    assert (gone.id, gone.desired_state, gone.epoch) == (instance_id, DesiredState.DELETED, 1)
    # ... which a snapshot says by not naming it; paris holds it at epoch 1, to receive.
    assert sync.desired_doc(session, lyon, 0).instances == []
    (there,) = sync.desired_doc(session, paris, 0).instances
    assert there.epoch == 1 and there.handoff is not None
    assert there.handoff.role.value == "destination"
