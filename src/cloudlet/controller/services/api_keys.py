"""API keys: bearer tokens with a role in a project for automation, until revoked.

Admins make keys for any project and role; a member only for their own project and
at most their own role. The bootstrap admin token is a key too, listed with the
others, but it cannot be revoked through the API (that would lock the operators out).
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from cloudlet.controller.db.models import ApiToken, User
from cloudlet.controller.services.auth import add_token
from cloudlet.controller.services.projects import require_project
from cloudlet.controller.services.users import RANK
from cloudlet.errors import ConflictError, ForbiddenError, NotFoundError
from cloudlet.schemas import DEFAULT_PROJECT

KEY = "key"


def _check_may_grant(caller: ApiToken, project: str, role: str) -> None:
    if caller.role == "admin":
        return
    if project != caller.project:
        raise ForbiddenError(f"API keys for project {project!r} need the admin role")
    if RANK[role] > RANK[caller.role]:
        raise ForbiddenError(f"a {caller.role} may not make a key with the {role} role")


def create_key(
    session: Session, caller: ApiToken, name: str, project: str, role: str
) -> tuple[str, ApiToken]:
    """Make a key; returns its secret (shown once) and its row.

    Raises:
        ForbiddenError: the caller may not give that role in that project.
        NotFoundError: no such project.
    """
    _check_may_grant(caller, project, role)
    require_project(session, project)
    return add_token(session, name, project, role, kind=KEY, user_id=caller.user_id)


def list_keys(session: Session, project: str | None) -> list[tuple[ApiToken, str | None]]:
    """The keys of ``project`` (None: every project), newest first, each with the name of
    the user who made it."""
    query = (
        select(ApiToken, User.name)
        .outerjoin(User, User.id == ApiToken.user_id)
        .where(ApiToken.kind == KEY)
        .order_by(ApiToken.created_at.desc(), ApiToken.id)
    )
    if project is not None:
        query = query.where(ApiToken.project == project)
    return [(key, user) for key, user in session.execute(query)]


def is_bootstrap(key: ApiToken) -> bool:
    return (
        key.name == "admin"
        and key.project == DEFAULT_PROJECT
        and key.role == "admin"
        and key.user_id is None
    )


def revoke_key(session: Session, caller: ApiToken, key_id: str) -> None:
    """Delete a key.

    Raises:
        NotFoundError: no such key in the caller's reach (their project, unless admin).
        ForbiddenError: a key with a role above the caller's.
        ConflictError: the bootstrap admin token.
    """
    key = session.get(ApiToken, key_id)
    if key is None or key.kind != KEY or (caller.role != "admin" and key.project != caller.project):
        raise NotFoundError(f"API key {key_id!r} not found")
    if RANK[key.role] > RANK[caller.role]:
        raise ForbiddenError(f"revoking a key with the {key.role} role needs that role")
    if is_bootstrap(key):
        raise ConflictError("the bootstrap admin token cannot be revoked through the API")
    session.delete(key)
    session.flush()
