"""A migrated SQLite database and a few rows, for controller service tests."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from cloudlet.controller.db.engine import make_engine, make_sessionmaker, upgrade
from cloudlet.controller.db.models import Site
from cloudlet.controller.services import catalog, fleet
from cloudlet.controller.services.auth import bootstrap
from cloudlet.schemas import AppCreate, EnrollRequest, SiteCreate


def sessions(tmp_path: Path) -> sessionmaker[Session]:
    engine = make_engine(f"sqlite:///{tmp_path / 'c.db'}")
    upgrade(engine)
    maker = make_sessionmaker(engine)
    with maker.begin() as session:
        bootstrap(session, tmp_path)
    return maker


def enrolled_site(session: Session, name: str = "lyon") -> Site:
    _site, token = fleet.create_site(session, SiteCreate(name=name))
    fleet.enroll(
        session,
        EnrollRequest(
            join_token=token.token,
            capacity={"vcpus": 8, "memory_mib": 8192, "disk_gib": 100},
        ),
    )
    site = fleet.get_site(session, name)
    assert site is not None
    return site


def web_app(session: Session) -> None:
    catalog.create_app(
        session,
        "admin",
        AppCreate(name="web", components=[{"command": ["true"]}], resources={"memory_mib": 64}),
    )
