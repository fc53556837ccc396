"""Projects: the tenants every app, image, overlay and instance belongs to."""

from __future__ import annotations

from sqlalchemy.orm import Session

from cloudlet.controller.db.models import Project
from cloudlet.controller.services._util import utcnow
from cloudlet.errors import NotFoundError


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
