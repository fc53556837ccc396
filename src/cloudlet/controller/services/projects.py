"""Projects: the tenants every app, image, overlay and instance belongs to."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from cloudlet.controller.db.models import Project
from cloudlet.controller.services._util import utcnow
from cloudlet.errors import ConflictError, NotFoundError


def ensure_project(session: Session, name: str) -> Project:
    """The project called ``name``, created if it does not exist."""
    project = session.get(Project, name)
    if project is None:
        project = Project(name=name, created_at=utcnow())
        session.add(project)
        session.flush()
    return project


def require_project(session: Session, name: str) -> Project:
    """The project called ``name``.

    Raises:
        NotFoundError: there is no such project.
    """
    project = session.get(Project, name)
    if project is None:
        raise NotFoundError(f"project {name!r} not found")
    return project


def create_project(session: Session, name: str) -> Project:
    """Raises ConflictError when the name is taken."""
    if session.get(Project, name) is not None:
        raise ConflictError(f"project {name!r} exists already")
    return ensure_project(session, name)


def list_projects(session: Session, only: str | None = None) -> list[Project]:
    """Every project by name, or just ``only``."""
    query = select(Project).order_by(Project.name)
    if only is not None:
        query = query.where(Project.name == only)
    return list(session.scalars(query))
