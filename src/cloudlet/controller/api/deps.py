"""Request-scoped dependencies: a database session, the caller, the agent's site."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from cloudlet.controller.db.models import ApiToken, Instance, Site
from cloudlet.controller.services import fleet, instances
from cloudlet.controller.services.auth import authenticate_user
from cloudlet.controller.state import ControllerState
from cloudlet.errors import ForbiddenError, NotFoundError
from cloudlet.schemas.common import bearer_secret


def state(request: Request) -> ControllerState:
    return request.app.state.cloudlet


def db(request: Request) -> Iterator[Session]:
    """One transaction per request: committed when the handler returns normally,
    before the response is sent (see ``_DB``), so a client's next request sees it."""
    session = request.app.state.cloudlet.sessions()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


# scope="function": the commit happens before the answer leaves, not after it.
_DB = Depends(db, scope="function")


_READS = frozenset({"GET", "HEAD", "OPTIONS"})


def refuse_reader_writes(request: Request, user: ApiToken) -> ApiToken:
    """A reader's token is good for reading only (ForbiddenError otherwise)."""
    if user.role == "reader" and request.method not in _READS:
        raise ForbiddenError("a reader token may only read")
    return user


def current_user(request: Request, session: Annotated[Session, _DB]) -> ApiToken:
    return refuse_reader_writes(request, current_token(request, session))


def current_token(request: Request, session: Annotated[Session, _DB]) -> ApiToken:
    """The caller's token, whatever its role and the method (signing out, for one)."""
    return authenticate_user(session, bearer_secret(request.headers.get("authorization")))


def require_admin(user: ApiToken, what: str) -> None:
    """Raises ForbiddenError unless the caller has the admin role."""
    if user.role != "admin":
        raise ForbiddenError(f"{what} needs the admin role")


def load_site(session: Session, name: str) -> Site:
    """The site called ``name``; NotFoundError (404) if there is none."""
    site = fleet.get_site(session, name)
    if site is None:
        raise NotFoundError(f"site {name!r} not found")
    return site


def load_instance(session: Session, user: ApiToken, ref: str) -> Instance:
    """The instance ``ref`` (id or name) as the caller may see it: admins any project's by
    id; NotFoundError (404) otherwise, another project's included."""
    row = instances.get_instance(session, scope_project(user), ref)
    if row is None:
        raise NotFoundError(f"instance {ref!r} not found")
    return row


def scope_project(user: ApiToken, requested: str | None = None) -> str | None:
    """The project a request acts in: admins may name any (None: all projects);
    everyone else is confined to their own."""
    if user.role == "admin":
        return requested
    return user.project


DB = Annotated[Session, _DB]
User = Annotated[ApiToken, Depends(current_user)]
Token = Annotated[ApiToken, Depends(current_token)]
State = Annotated[ControllerState, Depends(state)]
