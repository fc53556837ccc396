"""Users, their roles in projects, and signing in with a password.

A user holds at most one role in each project: admin (the provider's operators, who
act on every project), member or reader. Signing in gives a login token scoped to one
project with the user's role there; it lives in api_tokens (only its hash) beside the
API keys. Any change to a user's roles ends their login tokens, so that a revoked or
lowered role takes effect at once rather than at the tokens' expiry.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from cloudlet.controller.db.models import ApiToken, Project, RoleAssignment, User
from cloudlet.controller.services._passwords import (
    burn_time,
    hash_password,
    needs_rehash,
    verify_password,
)
from cloudlet.controller.services._util import new_id, new_secret, utcnow
from cloudlet.controller.services.auth import add_token
from cloudlet.controller.services.projects import require_project
from cloudlet.errors import AuthError, ConflictError, ForbiddenError, InvalidInputError

#: Higher ranks may do all that lower ones may.
RANK = {"reader": 0, "member": 1, "admin": 2}
LOGIN = "login"
_BAD_LOGIN = "unknown user or wrong password"
EXPIRED_KEPT = timedelta(days=7)


def get_user(session: Session, name: str) -> User | None:
    return session.scalar(select(User).where(User.name == name))


def create_user(session: Session, name: str, password: str) -> User:
    """Raises ConflictError when the name is taken."""
    if get_user(session, name) is not None:
        raise ConflictError(f"user {name!r} exists already")
    user = User(id=new_id(), name=name, password_hash=hash_password(password), created_at=utcnow())
    session.add(user)
    session.flush()
    return user


def roles_of(session: Session, user_ids: list[str]) -> dict[str, dict[str, str]]:
    """Each user's roles: user id -> {project: role}."""
    out: dict[str, dict[str, str]] = {uid: {} for uid in user_ids}
    rows = session.execute(
        select(RoleAssignment.user_id, RoleAssignment.project, RoleAssignment.role).where(
            RoleAssignment.user_id.in_(user_ids)
        )
    )
    for uid, project, role in rows:
        out[uid][project] = role
    return out


def list_users(session: Session, project: str | None) -> list[User]:
    """Every user by name, or (``project`` given) those with a role in it."""
    query = select(User).order_by(User.name)
    if project is not None:
        query = query.where(
            User.id.in_(select(RoleAssignment.user_id).where(RoleAssignment.project == project))
        )
    return list(session.scalars(query))


def grant(session: Session, user: User, project: str, role: str) -> None:
    """Give ``user`` ``role`` in ``project`` (replacing the role held there).

    Raises:
        InvalidInputError: no such project (the body names it: the user, which the path
            names, exists).
    """
    if session.get(Project, project) is None:
        raise InvalidInputError(f"project {project!r} does not exist: create it first")
    row = session.get(RoleAssignment, (user.id, project))
    if row is None:
        row = RoleAssignment(user_id=user.id, project=project, role=role, created_at=utcnow())
        session.add(row)
    elif row.role == role:
        return
    else:
        row.role = role
    _roles_changed(session, user, project, role)


def revoke(session: Session, user: User, project: str) -> bool:
    """Take away ``user``'s role in ``project``; False if they held none there."""
    row = session.get(RoleAssignment, (user.id, project))
    if row is None:
        return False
    session.delete(row)
    _roles_changed(session, user, project, None)
    return True


def _roles_changed(session: Session, user: User, project: str, role: str | None) -> None:
    # Login tokens carry the role they were made with: end them all (an admin's act on
    # every project, so one role change can change any of them). API keys the user made
    # in the project stay only where they do not exceed what the user now holds there.
    session.execute(delete(ApiToken).where(ApiToken.user_id == user.id, ApiToken.kind == LOGIN))
    keys = session.scalars(
        select(ApiToken).where(ApiToken.user_id == user.id, ApiToken.project == project)
    )
    for key in keys:
        if role is None or RANK[key.role] > RANK[role]:
            session.delete(key)
    session.flush()


def login(
    session: Session, name: str, password: str, project: str | None, ttl_s: int
) -> tuple[str, ApiToken]:
    """Check the password and make a login token; returns its secret and its row.

    Raises:
        AuthError: an unknown user or a wrong password (the same answer, in about the
            same time).
        ForbiddenError: the user has no role in the project (or in any).
        InvalidInputError: no project named and the user has roles in several.
        NotFoundError: an admin named a project that does not exist.
    """
    user = get_user(session, name)
    if user is None:
        burn_time(password)
        raise AuthError(_BAD_LOGIN)
    if not verify_password(user.password_hash, password):
        raise AuthError(_BAD_LOGIN)
    if needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
    project, role = _scope(session, user, project)
    secret = new_secret(LOGIN)
    now = utcnow()
    # The user's long-expired tokens go; recently expired ones stay a while, so that
    # they are still answered as expired (token-expired) rather than unknown.
    session.execute(
        delete(ApiToken).where(
            ApiToken.user_id == user.id,
            ApiToken.kind == LOGIN,
            ApiToken.expires_at < now - EXPIRED_KEPT,
        )
    )
    return add_token(
        session, user.name, project, role, secret=secret, kind=LOGIN, user_id=user.id,
        expires_at=now + timedelta(seconds=ttl_s), now=now,
    )  # fmt: skip


def _scope(session: Session, user: User, project: str | None) -> tuple[str, str]:
    roles = roles_of(session, [user.id])[user.id]
    admin_in = sorted(p for p, r in roles.items() if r == "admin")
    if project is None:
        if len(roles) == 1:
            return next(iter(roles.items()))
        if admin_in:
            return admin_in[0], "admin"
        if not roles:
            raise ForbiddenError(f"user {user.name!r} has no role in any project")
        raise InvalidInputError(
            f"user {user.name!r} has roles in {', '.join(sorted(roles))}: name the project"
        )
    if admin_in:  # the provider's operators act on every project, as admins
        require_project(session, project)
        return project, "admin"
    if project in roles:
        return project, roles[project]
    raise ForbiddenError(f"user {user.name!r} has no role in project {project!r}")
