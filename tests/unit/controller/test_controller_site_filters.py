"""Site filters and cursors at the service level: availability in SQL, bad cursors."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from controller_fakes import enrolled_site, sessions
from sqlalchemy.orm import Session

from cloudlet.controller.services import _paging as paging
from cloudlet.controller.services import fleet
from cloudlet.errors import InvalidInputError
from cloudlet.schemas import Availability, SiteCreate


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    with sessions(tmp_path).begin() as s:
        yield s


def test_availability_filter_agrees_with_the_site_view(session: Session) -> None:
    now = datetime.now(UTC)
    grace = 60.0
    seen = {"fresh": 0, "edge": grace, "stale": grace + 1}
    for name, ago in seen.items():
        enrolled_site(session, name).last_seen = now - timedelta(seconds=ago)
    fleet.create_site(session, SiteCreate(name="never"))
    session.flush()
    for wanted in Availability:
        rows = fleet.list_sites(session, availability=wanted, now=now, grace_s=grace)
        expected = [
            s.name
            for s in fleet.list_sites(session)
            if fleet.site_view(s, now, grace).availability is wanted
        ]
        assert [s.name for s in rows] == expected
    offline = fleet.list_sites(session, availability=Availability.OFFLINE, now=now, grace_s=grace)
    assert [s.name for s in offline] == ["stale"]


def test_cursors_round_trip_and_refuse_anything_else() -> None:
    when = datetime(2026, 12, 3, 7, 0, 0, 123456, tzinfo=UTC)
    cursor = paging.encode("events", [when, 1, "", 42])
    assert paging.decode("events", cursor, (datetime, int, str, int)) == (when, 1, "", 42)
    with pytest.raises(InvalidInputError):
        paging.decode("sites", cursor, (str,))
    with pytest.raises(InvalidInputError):
        paging.decode("events", cursor + "x", (datetime, int, str, int))
