"""Client tokens: the controller's signing key, its public keys for sites, and minting.

The private key lives in a file (the operator's ``client_token_key_file``, or one made
at first start in ``data_dir/client-token.key``, mode 0600); only public keys reach the
database, one row per key any replica signs with, and every site's desired-state
document carries them all. A key new to the database bumps every site's revision, so
that the sites learn it on their next pull.
"""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from cloudlet._secret_file import write_secret
from cloudlet.controller.db.dialect import announce_revision, insert_ignore
from cloudlet.controller.db.models import App, ClientTokenKey, Site
from cloudlet.controller.services._util import utcnow
from cloudlet.controller.services.projects import require_project
from cloudlet.errors import ConfigError, NotFoundError
from cloudlet.schemas import SiteState
from cloudlet.schemas.client_tokens import ClientKey, ClientToken, ClientTokenCreate
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
    bumped = session.scalars(
        update(Site)
        .where(Site.state != SiteState.DECOMMISSIONED.value)
        .values(revision=Site.revision + 1, revision_changed_at=utcnow())
        .returning(Site.id)
    ).all()
    for site_id in bumped:
        announce_revision(session, site_id)
    return True


def public_keys(session: Session) -> list[ClientKey]:
    """Every public key client tokens may be signed with, oldest first."""
    rows = session.execute(
        select(ClientTokenKey.kid, ClientTokenKey.public_key).order_by(
            ClientTokenKey.created_at, ClientTokenKey.kid
        )
    )
    return [ClientKey(kid=kid, x=x) for kid, x in rows]


def mint(session: Session, key: SigningKey, body: ClientTokenCreate) -> ClientToken:
    """Sign a client token for apps of a project.

    Raises:
        NotFoundError: no such project, or an app it does not have.
    """
    require_project(session, body.project)
    held = set(
        session.scalars(
            select(App.name).where(App.project == body.project, App.name.in_(body.apps))
        )
    )
    missing = [a for a in body.apps if a not in held]
    if missing:
        raise NotFoundError(f"project {body.project!r} has no app {', '.join(map(repr, missing))}")
    token, claims = key.sign(body.project, body.apps, body.ttl_s, body.subject)
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
