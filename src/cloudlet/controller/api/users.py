"""/v1/users: people who sign in, and their roles per project (admins manage them)."""

from __future__ import annotations

from fastapi import APIRouter, status

from cloudlet.controller.api.deps import DB, User, require_admin
from cloudlet.controller.db.models import ApiToken
from cloudlet.controller.db.models import User as UserRow
from cloudlet.controller.services import users
from cloudlet.errors import NotFoundError
from cloudlet.schemas.common import Project
from cloudlet.schemas.identity import RoleAssignment, RoleGrant, UserCreate, UserInfo, UserName

router = APIRouter(prefix="/v1/users", tags=["identity"])


def _views(session: DB, rows: list[UserRow], only: str | None) -> list[UserInfo]:
    roles = users.roles_of(session, [u.id for u in rows])
    return [
        UserInfo(
            name=u.name,
            created_at=u.created_at,
            roles=[
                RoleAssignment(project=p, role=r)
                for p, r in sorted(roles[u.id].items())
                if only is None or p == only
            ],
        )
        for u in rows
    ]


def _only(user: ApiToken) -> str | None:
    """The project whose users and roles the caller may see (None: all)."""
    return None if user.role == "admin" else user.project


def _load(session: DB, caller: ApiToken, name: str) -> UserRow:
    row = users.get_user(session, name)
    only = _only(caller)
    if row is None or (only is not None and only not in users.roles_of(session, [row.id])[row.id]):
        raise NotFoundError(f"user {name!r} not found")
    return row


@router.post("", status_code=status.HTTP_201_CREATED, response_model=UserInfo)
def create_user(body: UserCreate, session: DB, user: User) -> UserInfo:
    """A new user (admins), with no role yet: grant one with POST /v1/users/{name}/roles."""
    require_admin(user, "creating users")
    return _views(session, [users.create_user(session, body.name, body.password)], None)[0]


@router.get("", response_model=list[UserInfo])
def list_users(session: DB, user: User) -> list[UserInfo]:
    """Every user for admins; for everyone else, the users of their own project (and
    only their roles there)."""
    only = _only(user)
    return _views(session, users.list_users(session, only), only)


@router.get("/{name}", response_model=UserInfo)
def show_user(name: UserName, session: DB, user: User) -> UserInfo:
    only = _only(user)
    return _views(session, [_load(session, user, name)], only)[0]


@router.post("/{name}/roles", response_model=UserInfo)
def grant_role(name: UserName, body: RoleGrant, session: DB, user: User) -> UserInfo:
    """Give the user a role in a project (admins), replacing the one held there. The
    user's login tokens end: they sign in again to act with the new role."""
    require_admin(user, "granting roles")
    row = _load(session, user, name)
    users.grant(session, row, body.project, body.role)
    return _views(session, [row], None)[0]


@router.delete("/{name}/roles/{project}", response_model=UserInfo)
def revoke_role(name: UserName, project: Project, session: DB, user: User) -> UserInfo:
    """Take the user's role in the project away (admins); their login tokens end, and
    the API keys they made there are revoked."""
    require_admin(user, "revoking roles")
    row = _load(session, user, name)
    if not users.revoke(session, row, project):
        raise NotFoundError(f"user {name!r} has no role in project {project!r}")
    return _views(session, [row], None)[0]
