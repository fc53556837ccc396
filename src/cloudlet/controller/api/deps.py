"""Request-scoped dependencies: a database session, the caller, the agent's site."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from cloudlet.controller.db.models import ApiToken, Site
from cloudlet.controller.services.auth import authenticate_site, authenticate_user
from cloudlet.controller.state import ControllerState


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


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


# scope="function": the commit happens before the answer leaves, not after it.
_DB = Depends(db, scope="function")


def current_user(request: Request, session: Annotated[Session, _DB]) -> ApiToken:
    return authenticate_user(session, _bearer(request))


def agent_site(request: Request, session: Annotated[Session, _DB]) -> Site:
    site = authenticate_site(session, _bearer(request))
    request.scope.setdefault("state", {})["site_id"] = site.id
    return site


def agent_site_brief(request: Request) -> Site:
    """Like :func:`agent_site` but holds no session afterwards: for long polls,
    which must not pin a database connection while they wait."""
    with request.app.state.cloudlet.sessions() as session:
        site = authenticate_site(session, _bearer(request))
        session.expunge(site)
    request.scope.setdefault("state", {})["site_id"] = site.id
    return site


def scope_project(user: ApiToken, requested: str | None = None) -> str | None:
    """The project a request acts in: admins may name any (None: all projects);
    everyone else is confined to their own."""
    if user.role == "admin":
        return requested
    return user.project


DB = Annotated[Session, _DB]
User = Annotated[ApiToken, Depends(current_user)]
AgentSite = Annotated[Site, Depends(agent_site)]
AgentSiteBrief = Annotated[Site, Depends(agent_site_brief)]
State = Annotated[ControllerState, Depends(state)]
