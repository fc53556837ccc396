"""/v1/projects: the tenants (admins make them; everyone else sees their own)."""

from __future__ import annotations

from fastapi import APIRouter, status

from cloudlet.controller.api.deps import DB, User, require_admin
from cloudlet.controller.services import projects
from cloudlet.errors import NotFoundError
from cloudlet.schemas.common import Project
from cloudlet.schemas.identity import ProjectCreate, ProjectInfo

router = APIRouter(prefix="/v1/projects", tags=["identity"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ProjectInfo)
def create_project(body: ProjectCreate, session: DB, user: User) -> ProjectInfo:
    """A new project (admins); 409 if the name is taken."""
    require_admin(user, "creating projects")
    return ProjectInfo.model_validate(projects.create_project(session, body.name))


@router.get("", response_model=list[ProjectInfo])
def list_projects(session: DB, user: User) -> list[ProjectInfo]:
    """Every project by name for admins; the caller's own for everyone else."""
    only = None if user.role == "admin" else user.project
    return [ProjectInfo.model_validate(p) for p in projects.list_projects(session, only)]


@router.get("/{name}", response_model=ProjectInfo)
def show_project(name: Project, session: DB, user: User) -> ProjectInfo:
    if user.role != "admin" and name != user.project:
        raise NotFoundError(f"project {name!r} not found")
    return ProjectInfo.model_validate(projects.require_project(session, name))
