"""/v1/client-tokens: tokens for an app's end users, and the public keys that check them."""

from __future__ import annotations

from fastapi import APIRouter, status

from cloudlet.controller.api.deps import DB, State, User
from cloudlet.controller.services import client_tokens
from cloudlet.errors import ForbiddenError
from cloudlet.schemas.client_tokens import ClientKeySet, ClientToken, ClientTokenCreate

router = APIRouter(prefix="/v1/client-tokens", tags=["client-tokens"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ClientToken)
def create_client_token(body: ClientTokenCreate, session: DB, user: User, st: State) -> ClientToken:
    """Sign a token that lets a client start the named apps of a project at any site,
    with the controller unreachable too; its instances are metered to the project.
    Admins mint for any project, members for their own."""
    if user.role != "admin" and body.project != user.project:
        raise ForbiddenError(f"client tokens for project {body.project!r} need the admin role")
    return client_tokens.mint(session, st.client_key, body)


@router.get("/keys", response_model=ClientKeySet)
def client_token_keys(session: DB) -> ClientKeySet:
    """The public keys (a JWK set) client tokens are signed with; sites get them in
    their desired state."""
    return ClientKeySet(keys=client_tokens.public_keys(session))
