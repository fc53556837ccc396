"""Bootstrap of the admin project and token, and bearer-token checks."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import NamedTuple

from sqlalchemy import Connection, bindparam, select
from sqlalchemy.orm import Session

from cloudlet._secret_file import write_secret
from cloudlet.controller.db.models import ApiToken, Project, Site
from cloudlet.controller.services._util import hash_secret, new_id, new_secret, utcnow
from cloudlet.controller.services.projects import ensure_project
from cloudlet.errors import AuthError, InvalidInputError, TokenExpiredError
from cloudlet.schemas import DEFAULT_PROJECT

ADMIN_TOKEN_FILE = "admin.token"


def bootstrap(session: Session, data_dir: Path) -> None:
    """Create the admin project and, at first start, the admin token file.

    The token is written (mode 0600) before its hash is committed, so a crash
    in between leaves a file to retry with rather than a token nobody knows.
    """
    if session.get(Project, DEFAULT_PROJECT) is None:
        session.add(Project(name=DEFAULT_PROJECT, created_at=utcnow()))
        session.flush()
    token_path = data_dir / ADMIN_TOKEN_FILE
    existing = session.scalar(select(ApiToken).where(ApiToken.name == "admin"))
    if existing is not None:
        return
    if token_path.exists():
        token = token_path.read_text().strip()
    else:
        token = new_secret("admin")
        write_secret(token_path, token)
    add_token(session, "admin", DEFAULT_PROJECT, "admin", secret=token)


ROLES = ("admin", "member", "reader")


def add_token(
    session: Session,
    name: str,
    project: str,
    role: str,
    *,
    secret: str | None = None,
    kind: str = "key",
    user_id: str | None = None,
    expires_at: datetime | None = None,
    now: datetime | None = None,
) -> tuple[str, ApiToken]:
    """Store a bearer token (API key or login, only its hash) and return its secret, a
    new one unless ``secret`` is given, and its row."""
    secret = secret or new_secret(role)
    row = ApiToken(
        id=new_id(),
        name=name,
        project=project,
        role=role,
        token_hash=hash_secret(secret),
        created_at=now or utcnow(),
        kind=kind,
        user_id=user_id,
        expires_at=expires_at,
    )
    session.add(row)
    session.flush()
    return secret, row


def create_api_token(session: Session, name: str, project: str, role: str) -> str:
    """Add an API token (for automation, or a project's member) and return its secret,
    which is stored only hashed. The project is created if it does not exist.

    Raises:
        InvalidInputError: an unknown role.
    """
    if role not in ROLES:
        raise InvalidInputError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    ensure_project(session, project)
    return add_token(session, name, project, role)[0]


def authenticate_user(session: Session, token: str | None) -> ApiToken:
    """The API token (an API key or a login token) behind a bearer secret.

    Raises:
        AuthError: no token, or an unknown one.
        TokenExpiredError: a login token past its expiry.
    """
    if not token:
        raise AuthError("missing bearer token")
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_secret(token)))
    if row is None:
        raise AuthError("invalid bearer token")
    if row.expires_at is not None and row.expires_at <= utcnow():
        raise TokenExpiredError(
            f"the token expired at {row.expires_at.isoformat(timespec='seconds')}; sign in again"
        )
    return row


def authenticate_site(session: Session, credential: str | None) -> Site:
    """The site whose agent holds this credential.

    Raises:
        AuthError: missing or unknown credential, or a decommissioned site.
    """
    if not credential:
        raise AuthError("missing site credential")
    site = session.scalar(select(Site).where(Site.credential_hash == hash_secret(credential)))
    if site is None:
        raise AuthError("invalid or revoked site credential")
    return site


class SiteBrief(NamedTuple):
    """The few columns of a site the agent hot paths need, read without the ORM."""

    id: str
    revision: int
    applied_revision: int
    acked_seq: int


# Built once: constructing and cache-keying a statement per call costs more than
# running it.
_SITE_BRIEFS = select(
    Site.credential_hash, Site.id, Site.revision, Site.applied_revision, Site.acked_seq
).where(Site.credential_hash.in_(bindparam("hashes", expanding=True)))


def site_briefs(connection: Connection, credential_hashes: list[str]) -> dict[str, SiteBrief]:
    """The sites holding these credentials (by their hash), as one Core query: agents
    call it a thousand times a second, where building ORM objects would be most of
    the cost. A revoked or unknown credential is absent."""
    rows = connection.execute(_SITE_BRIEFS, {"hashes": credential_hashes})
    return {digest: SiteBrief(*brief) for digest, *brief in rows}
