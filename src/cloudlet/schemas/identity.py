"""Identity on the wire: projects, users and their roles, sign-in and API keys."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field

from cloudlet.schemas._base import Input, Model
from cloudlet.schemas.common import Name, Project

Role = Literal["admin", "member", "reader"]
#: A user's name: what they sign in with.
UserName = Annotated[
    str, Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([a-z0-9._@-]*[a-z0-9])?$")
]
#: Bounded so that nobody makes the controller hash a megabyte.
Password = Annotated[str, Field(min_length=8, max_length=1024)]
#: The longest a sign-in may ask its token to live (the controller's setting caps it too).
MAX_LOGIN_TTL_S = 30 * 24 * 3600


class ProjectCreate(Input):
    name: Project


class ProjectInfo(Model):
    name: str
    created_at: datetime


class UserCreate(Input):
    """A new user; give them roles with POST /v1/users/{name}/roles."""

    name: UserName
    password: Password


class RoleGrant(Input):
    """A role in a project: it replaces the role the user had there, if any."""

    project: Project
    role: Role


class RoleAssignment(Model):
    project: str
    role: str


class UserInfo(Model):
    """A user and their roles (never the password or its hash)."""

    name: str
    created_at: datetime
    roles: list[RoleAssignment]


class LoginRequest(Input):
    """Sign in. Without ``project``: the user's only project, else the one where they
    are admin; a user with roles in several must name one."""

    user: UserName
    password: str = Field(min_length=1, max_length=1024)
    project: Project | None = None
    ttl_s: int | None = Field(
        None,
        ge=1,
        le=MAX_LOGIN_TTL_S,
        description="Lifetime in seconds, at most the controller's limit (its default).",
    )


class LoginToken(Model):
    """A bearer token scoped to one project with the user's role there."""

    token: str = Field(description="The bearer secret; shown once, stored only hashed.")
    user: str
    project: str
    role: str
    expires_at: datetime


class ApiKeyCreate(Input):
    """An API key for automation: a bearer token with a role in a project, until revoked."""

    name: Name
    project: Project
    role: Role = "member"


class ApiKey(Model):
    id: str
    name: str
    project: str
    role: str
    created_at: datetime
    created_by: str | None = Field(None, description="The user who made it, if one did.")


class ApiKeyCreated(ApiKey):
    token: str = Field(description="The bearer secret; shown once, stored only hashed.")


class Caller(Model):
    """Who the bearer token speaks for."""

    kind: Literal["key", "login"]
    name: str
    user: str | None
    project: str
    role: str
    expires_at: datetime | None
