"""/v1/auth/tokens (signing in and out) and /v1/api-keys (keys for automation)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response, status

from cloudlet.controller.api.deps import DB, State, Token, User, scope_project
from cloudlet.controller.db.models import ApiToken
from cloudlet.controller.services import api_keys, users
from cloudlet.errors import ConflictError
from cloudlet.schemas.common import Project
from cloudlet.schemas.identity import (
    ApiKey,
    ApiKeyCreate,
    ApiKeyCreated,
    Caller,
    LoginRequest,
    LoginToken,
)

KeyId = Annotated[str, Path(min_length=1, max_length=36)]

router = APIRouter(prefix="/v1", tags=["identity"])


@router.post("/auth/tokens", status_code=status.HTTP_201_CREATED, response_model=LoginToken)
def login(body: LoginRequest, session: DB, st: State) -> LoginToken:
    """Sign in with a user's password: a bearer token scoped to one project, with the
    user's role there, that expires (at most the controller's `login_token_ttl_s`)."""
    limit = st.settings.login_token_ttl_s
    ttl = min(body.ttl_s or limit, limit)
    secret, token = users.login(session, body.user, body.password, body.project, ttl)
    assert token.expires_at is not None
    return LoginToken(
        token=secret,
        user=body.user,
        project=token.project,
        role=token.role,
        expires_at=token.expires_at,
    )


@router.get("/auth/tokens/current", response_model=Caller)
def whoami(session: DB, token: Token) -> Caller:
    """Who the bearer token speaks for: its kind, user, project, role and expiry."""
    user = session.get(users.User, token.user_id) if token.user_id else None
    return Caller(
        kind="login" if token.kind == users.LOGIN else "key",
        name=token.name,
        user=user.name if user else None,
        project=token.project,
        role=token.role,
        expires_at=token.expires_at,
    )


@router.delete("/auth/tokens/current", status_code=status.HTTP_204_NO_CONTENT)
def logout(session: DB, token: Token) -> Response:
    """Sign out: the login token making the request stops working (readers too). An API
    key is revoked with DELETE /v1/api-keys/{id} instead (409 here)."""
    if token.kind != users.LOGIN:
        raise ConflictError("this is an API key, not a login token; revoke it by its id")
    session.delete(token)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _key(row: ApiToken, creator: str | None) -> ApiKey:
    return ApiKey(
        id=row.id,
        name=row.name,
        project=row.project,
        role=row.role,
        created_at=row.created_at,
        created_by=creator,
    )


@router.post("/api-keys", status_code=status.HTTP_201_CREATED, response_model=ApiKeyCreated)
def create_api_key(body: ApiKeyCreate, session: DB, user: User) -> ApiKeyCreated:
    """An API key for automation. Admins: any project and role; members: their own
    project, member or reader. The secret is shown once and stored only hashed."""
    secret, row = api_keys.create_key(session, user, body.name, body.project, body.role)
    creator = session.get(users.User, user.user_id) if user.user_id else None
    return ApiKeyCreated(**_key(row, creator.name if creator else None).model_dump(), token=secret)


@router.get("/api-keys", response_model=list[ApiKey])
def list_api_keys(
    session: DB,
    user: User,
    project: Project | None = Query(None, description="Only this project's (admins)."),
) -> list[ApiKey]:
    """The API keys of the caller's project (admins: every project, or the one named),
    newest first; never their secrets."""
    return [_key(k, c) for k, c in api_keys.list_keys(session, scope_project(user, project))]


@router.delete("/api-keys/{key_id}", status_code=status.HTTP_204_NO_CONTENT)
def revoke_api_key(key_id: KeyId, session: DB, user: User) -> Response:
    """Revoke a key of the caller's project (admins: any but the bootstrap admin token)."""
    api_keys.revoke_key(session, user, key_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
