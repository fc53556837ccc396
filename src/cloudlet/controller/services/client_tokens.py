"""Client tokens: the controller's signing key, its public keys for sites, and minting.

The private key lives in a file (the operator's ``client_token_key_file``, or one made
at first start in ``data_dir/client-token.key``, mode 0600); only public keys reach the
database, one row per key any replica signs with, and every site's desired-state
document carries them all. A key new to the database bumps every site's revision, so
that the sites learn it on their next pull.

What a minted token says is recorded (not the token), so that a project can list its
tokens and revoke one before it expires. Revoking one, or retiring a key, bumps every
site's revision too: each site's next document carries the revoked ids (until those
tokens would have expired anyway) and only the keys not retired.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from cloudlet._secret_file import write_secret
from cloudlet.controller.db.dialect import announce_revision, insert_ignore
from cloudlet.controller.db.models import App, ClientTokenKey, IssuedClientToken, Site
from cloudlet.controller.services._util import utcnow
from cloudlet.controller.services.projects import require_project
from cloudlet.errors import ConfigError, ConflictError, NotFoundError
from cloudlet.schemas import SiteState
from cloudlet.schemas.client_tokens import (
    ClientKey,
    ClientToken,
    ClientTokenCreate,
    ClientTokenInfo,
)
from cloudlet.settings import ControllerSettings
from cloudlet.tokens import SigningKey

log = logging.getLogger(__name__)

KEY_FILE = "client-token.key"


def load_signing_key(settings: ControllerSettings) -> SigningKey:
    """The key this controller signs client tokens with, made at first start if none.

    Raises:
        ConfigError: the configured key file is missing or not an Ed25519 PEM key.
    """
    configured = settings.client_token_key_file
    path = configured if configured is not None else settings.data_dir / KEY_FILE
    if path.exists():
        return SigningKey.from_pem(path.read_bytes())
    if configured is not None:
        raise ConfigError(f"client_token_key_file {configured} does not exist")
    key = SigningKey.generate()
    write_secret(Path(path), key.to_pem().strip())
    log.info("made a client-token signing key in %s (kid %s)", path, key.kid)
    return key


def register_key(session: Session, key: ClientKey) -> bool:
    """Record a public key; if it is new, bump every live site's revision so that each
    pulls a document carrying it. Returns whether it was new."""
    statement = insert_ignore(ClientTokenKey.__table__, session.get_bind().dialect.name)
    inserted = session.execute(
        statement.values(kid=key.kid, public_key=key.x, created_at=utcnow())
    ).rowcount
    if not inserted:
        return False
    _bump_every_site(session)
    return True


def _bump_every_site(session: Session) -> None:
    """A change every site's document carries (keys, revocations): each live site pulls."""
    bumped = session.scalars(
        update(Site)
        .where(Site.state != SiteState.DECOMMISSIONED.value)
        .values(revision=Site.revision + 1, revision_changed_at=utcnow())
        .returning(Site.id)
    ).all()
    for site_id in bumped:
        announce_revision(session, site_id)


def public_keys(session: Session) -> list[ClientKey]:
    """Every public key client tokens may be signed with (not retired), oldest first."""
    rows = session.execute(
        select(ClientTokenKey.kid, ClientTokenKey.public_key)
        .where(ClientTokenKey.retired_at.is_(None))
        .order_by(ClientTokenKey.created_at, ClientTokenKey.kid)
    )
    return [ClientKey(kid=kid, x=x) for kid, x in rows]


def retire_key(session: Session, kid: str, signing_kid: str) -> None:
    """Retire a public key: sites drop it at their next pull, and the tokens it signed
    stop working there. The key this controller signs with cannot be retired (give the
    replica a new key first, then retire the old one).

    Raises:
        NotFoundError: no such key.
        ConflictError: it is this controller's signing key.
    """
    row = session.get(ClientTokenKey, kid)
    if row is None:
        raise NotFoundError(f"client-token key {kid!r} not found")
    if kid == signing_kid:
        raise ConflictError(
            f"key {kid!r} is the one this controller signs with: start it with another "
            "client_token_key_file first"
        )
    if row.retired_at is None:
        row.retired_at = utcnow()
        _bump_every_site(session)


def mint(session: Session, key: SigningKey, body: ClientTokenCreate) -> ClientToken:
    """Sign a client token for apps of a project.

    Raises:
        NotFoundError: no such project, or an app it does not have.
    """
    require_project(session, body.project)
    if _retired(session, key.kid):
        raise ConflictError(
            f"this controller's signing key {key.kid!r} was retired: sites would refuse "
            "its tokens; start it with a new client_token_key_file"
        )
    held = set(
        session.scalars(
            select(App.name).where(App.project == body.project, App.name.in_(body.apps))
        )
    )
    missing = [a for a in body.apps if a not in held]
    if missing:
        raise NotFoundError(f"project {body.project!r} has no app {', '.join(map(repr, missing))}")
    token, claims = key.sign(body.project, body.apps, body.ttl_s, body.subject)
    session.add(
        IssuedClientToken(
            jti=claims.jti,
            project=claims.project,
            subject=claims.subject,
            apps=list(claims.apps),
            kid=claims.kid,
            issued_at=claims.issued_at,
            expires_at=claims.expires_at,
        )
    )
    log.info(
        "client token %s for %s (project %s, apps %s) until %s",
        claims.jti,
        claims.subject,
        claims.project,
        ",".join(claims.apps),
        claims.expires_at.isoformat(),
    )
    return ClientToken(
        token=token,
        kid=claims.kid,
        jti=claims.jti,
        subject=claims.subject,
        project=claims.project,
        apps=list(claims.apps),
        issued_at=claims.issued_at,
        expires_at=claims.expires_at,
    )


def _retired(session: Session, kid: str) -> bool:
    return (
        session.scalar(select(ClientTokenKey.retired_at).where(ClientTokenKey.kid == kid))
        is not None
    )


def _info(row: IssuedClientToken) -> ClientTokenInfo:
    return ClientTokenInfo(
        jti=row.jti,
        subject=row.subject,
        project=row.project,
        apps=list(row.apps),
        kid=row.kid,
        issued_at=row.issued_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
    )


def list_tokens(
    session: Session, project: str | None, include_expired: bool, now: datetime | None = None
) -> list[ClientTokenInfo]:
    """The tokens minted for a project (None: every project), newest first."""
    query = select(IssuedClientToken).order_by(
        IssuedClientToken.issued_at.desc(), IssuedClientToken.jti
    )
    if project is not None:
        query = query.where(IssuedClientToken.project == project)
    if not include_expired:
        query = query.where(IssuedClientToken.expires_at > (now or utcnow()))
    return [_info(row) for row in session.scalars(query)]


def revoke(session: Session, jti: str, project: str | None) -> ClientTokenInfo:
    """Revoke a token before its expiry: every site refuses it from its next pull on (a
    site cut off from the controller learns it when its link returns). Revoking twice
    changes nothing.

    Args:
        project: the caller's project (None: an admin, any project).

    Raises:
        NotFoundError: no such token (in the caller's project).
    """
    row = session.get(IssuedClientToken, jti)
    if row is None or (project is not None and row.project != project):
        raise NotFoundError(f"client token {jti!r} not found")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        if row.expires_at > row.revoked_at:
            _bump_every_site(session)
        log.info("client token %s (project %s, %s) revoked", jti, row.project, row.subject)
    return _info(row)


def revoked_ids(session: Session) -> list[str]:
    """The ids of revoked tokens that have not expired yet: what every site refuses."""
    return list(
        session.scalars(
            select(IssuedClientToken.jti)
            .where(
                IssuedClientToken.revoked_at.is_not(None),
                IssuedClientToken.expires_at > utcnow(),
            )
            .order_by(IssuedClientToken.jti)
        )
    )
