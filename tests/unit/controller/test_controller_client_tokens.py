"""The controller's client-token key: made once and kept, published to every site's
desired state, and tokens minted only for apps a project has."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from controller_fakes import enrolled_site, sessions, web_app

from cloudlet.controller.db.models import IssuedClientToken, Site
from cloudlet.controller.services import client_tokens, fleet, sync
from cloudlet.errors import ConfigError, ConflictError, NotFoundError
from cloudlet.schemas.client_tokens import ClientTokenCreate
from cloudlet.settings import ControllerSettings
from cloudlet.tokens import SigningKey, Verifier


def test_the_key_is_made_once_mode_0600_and_kept(tmp_path: Path) -> None:
    settings = ControllerSettings(data_dir=tmp_path)
    key = client_tokens.load_signing_key(settings)
    path = tmp_path / client_tokens.KEY_FILE
    assert path.stat().st_mode & 0o777 == 0o600
    assert client_tokens.load_signing_key(settings).kid == key.kid


def test_an_operator_key_file_is_used_and_a_missing_one_refused(tmp_path: Path) -> None:
    mine = SigningKey.generate()
    (tmp_path / "mine.pem").write_text(mine.to_pem())
    settings = ControllerSettings(data_dir=tmp_path, client_token_key_file=tmp_path / "mine.pem")
    assert client_tokens.load_signing_key(settings).kid == mine.kid
    assert not (tmp_path / client_tokens.KEY_FILE).exists()
    missing = ControllerSettings(data_dir=tmp_path, client_token_key_file=tmp_path / "nope.pem")
    with pytest.raises(ConfigError, match="does not exist"):
        client_tokens.load_signing_key(missing)


def test_a_new_key_reaches_every_site_by_a_revision_bump(tmp_path: Path) -> None:
    maker = sessions(tmp_path)
    key, replica = SigningKey.generate(), SigningKey.generate()
    with maker.begin() as session:
        site = enrolled_site(session)
        before = site.revision
        assert client_tokens.register_key(session, key.public)
    with maker.begin() as session:
        site = session.get(Site, site.id)
        assert site is not None and site.revision == before + 1
        assert not client_tokens.register_key(session, key.public)  # known: no bump
        assert client_tokens.register_key(session, replica.public)  # another replica's
    with maker.begin() as session:
        site = fleet.get_site(session, "lyon")
        assert site is not None and site.revision == before + 2
        doc = sync.desired_doc(session, site, before)
        assert doc.client_keys is not None
        assert {k.kid for k in doc.client_keys} == {key.kid, replica.kid}


def test_minting_checks_the_project_and_its_apps(tmp_path: Path) -> None:
    maker = sessions(tmp_path)
    key = SigningKey.generate()
    with maker.begin() as session:
        web_app(session)
        minted = client_tokens.mint(
            session, key, ClientTokenCreate(project="admin", apps=["web"], ttl_s=600)
        )
        claims = Verifier([key.public]).verify(minted.token)
        assert (claims.project, claims.apps, claims.jti) == ("admin", ("web",), minted.jti)
        with pytest.raises(NotFoundError, match="no app 'maps'"):
            client_tokens.mint(
                session, key, ClientTokenCreate(project="admin", apps=["web", "maps"])
            )
        with pytest.raises(NotFoundError, match="project 'fire'"):
            client_tokens.mint(session, key, ClientTokenCreate(project="fire", apps=["web"]))


def test_a_revoked_token_reaches_every_site_until_it_would_have_expired(tmp_path: Path) -> None:
    maker = sessions(tmp_path)
    key = SigningKey.generate()
    with maker.begin() as session:
        web_app(session)
        site = enrolled_site(session)
        short = client_tokens.mint(session, key, ClientTokenCreate(project="admin", apps=["web"]))
        kept = client_tokens.mint(session, key, ClientTokenCreate(project="admin", apps=["web"]))
    with maker.begin() as session:
        listed = client_tokens.list_tokens(session, "admin", include_expired=False)
        assert {t.jti for t in listed} == {short.jti, kept.jti}
        assert client_tokens.list_tokens(session, "fire", include_expired=False) == []
        with pytest.raises(NotFoundError):  # another project's caller
            client_tokens.revoke(session, short.jti, "fire")
        before = session.get_one(Site, site.id).revision
        assert client_tokens.revoke(session, short.jti, "admin").revoked_at is not None
    with maker.begin() as session:
        after = session.get_one(Site, site.id)
        assert after.revision == before + 1
        client_tokens.revoke(session, short.jti, None)  # twice: no change, no bump
    with maker.begin() as session:
        after = session.get_one(Site, site.id)
        assert after.revision == before + 1
        assert sync.desired_doc(session, after, before).client_revoked == [short.jti]
        # Past its expiry a revoked token need not be carried any more.
        row = session.get_one(IssuedClientToken, short.jti)
        row.expires_at = datetime.now(UTC) - timedelta(seconds=1)
    with maker.begin() as session:
        assert sync.desired_doc(session, session.get_one(Site, site.id), 0).client_revoked == []


def test_a_retired_key_leaves_every_document_and_cannot_sign(tmp_path: Path) -> None:
    maker = sessions(tmp_path)
    old, new = SigningKey.generate(), SigningKey.generate()
    with maker.begin() as session:
        web_app(session)
        site = enrolled_site(session)
        client_tokens.register_key(session, old.public)
        client_tokens.register_key(session, new.public)
        with pytest.raises(ConflictError, match="signs with"):
            client_tokens.retire_key(session, new.kid, signing_kid=new.kid)
        with pytest.raises(NotFoundError):
            client_tokens.retire_key(session, "nope", signing_kid=new.kid)
        client_tokens.retire_key(session, old.kid, signing_kid=new.kid)
    with maker.begin() as session:
        doc = sync.desired_doc(session, session.get_one(Site, site.id), 0)
        assert [k.kid for k in doc.client_keys or []] == [new.kid]
        # A replica still holding the old key does not bring it back, nor sign with it.
        assert not client_tokens.register_key(session, old.public)
        with pytest.raises(ConflictError, match="retired"):
            client_tokens.mint(session, old, ClientTokenCreate(project="admin", apps=["web"]))
