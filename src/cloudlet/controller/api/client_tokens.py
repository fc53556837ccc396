"""/v1/client-tokens: tokens for an app's end users, and the public keys that check them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response, status

from cloudlet.controller.api.deps import DB, State, User, require_admin, scope_project
from cloudlet.controller.services import client_tokens
from cloudlet.errors import ForbiddenError
from cloudlet.schemas.client_tokens import (
    ClientKeySet,
    ClientToken,
    ClientTokenCreate,
    ClientTokenInfo,
    ClientTokenRevoke,
)
from cloudlet.schemas.common import Project

#: A key's RFC 7638 thumbprint: a short base64url string.
KeyId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]

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


@router.get("", response_model=list[ClientTokenInfo])
def list_client_tokens(
    session: DB,
    user: User,
    project: Project | None = Query(None, description="Only this project's (admins)."),
    include_expired: bool = Query(False, description="Also the tokens past their expiry."),
) -> list[ClientTokenInfo]:
    """The client tokens minted for the caller's project (admins: every project, or the
    one named), newest first: what each says, never the token itself."""
    return client_tokens.list_tokens(session, scope_project(user, project), include_expired)


@router.delete("/keys/{kid}", status_code=status.HTTP_204_NO_CONTENT)
def retire_client_token_key(kid: KeyId, session: DB, user: User, st: State) -> Response:
    """Retire a signing key (admins): sites drop it at their next pull, and the tokens
    it signed stop working there. This controller's own key cannot be retired."""
    require_admin(user, "retiring a client-token key")
    client_tokens.retire_key(session, kid, st.client_key.kid)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/revocations", response_model=ClientTokenInfo)
def revoke_client_token(body: ClientTokenRevoke, session: DB, user: User) -> ClientTokenInfo:
    """Revoke a client token before it expires (a lost device): every site refuses it
    from its next pull on; a site cut off then learns it when its link returns.
    Revoking twice changes nothing."""
    return client_tokens.revoke(session, body.jti, scope_project(user))
