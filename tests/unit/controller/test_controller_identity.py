"""Password hashes, signing in and login-token expiry (services, on a migrated SQLite)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from controller_fakes import sessions

from cloudlet.controller.db.models import ApiToken
from cloudlet.controller.services import _passwords, api_keys, users
from cloudlet.controller.services.auth import authenticate_user
from cloudlet.controller.services.projects import ensure_project
from cloudlet.errors import (
    AuthError,
    ConflictError,
    ForbiddenError,
    InvalidInputError,
    TokenExpiredError,
)

PASSWORD = "tr0ub4dor&3 is long"


def test_passwords_are_argon2id_salted_and_checked() -> None:
    first, second = _passwords.hash_password(PASSWORD), _passwords.hash_password(PASSWORD)
    assert first.startswith("$argon2id$") and first != second  # a salt each
    assert PASSWORD not in first
    assert _passwords.verify_password(first, PASSWORD)
    assert not _passwords.verify_password(first, PASSWORD + "!")
    assert not _passwords.verify_password("not a hash", PASSWORD)
    assert not _passwords.needs_rehash(first)
    # A hash made with other parameters still verifies, and is due to be re-made.
    old = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1).hash(PASSWORD)
    assert _passwords.verify_password(old, PASSWORD) and _passwords.needs_rehash(old)


def test_sign_in_scopes_the_token_and_it_expires(tmp_path: Path) -> None:
    maker = sessions(tmp_path)
    with maker.begin() as session:
        for name in ("tenant-a", "tenant-b"):
            ensure_project(session, name)
        user = users.create_user(session, "alice", PASSWORD)
        with pytest.raises(ConflictError):
            users.create_user(session, "alice", PASSWORD)
        with pytest.raises(ForbiddenError):
            users.login(session, "alice", PASSWORD, None, 60)
        users.grant(session, user, "tenant-a", "member")
        secret, token = users.login(session, "alice", PASSWORD, None, 60)
        assert (token.project, token.role, token.kind) == ("tenant-a", "member", "login")
        assert token.token_hash != secret and secret.startswith("clt_login_")
        assert authenticate_user(session, secret).id == token.id
        for name, password in (("alice", "wrong password"), ("nobody", PASSWORD)):
            with pytest.raises(AuthError, match="unknown user or wrong password"):
                users.login(session, name, password, None, 60)
        with pytest.raises(ForbiddenError):
            users.login(session, "alice", PASSWORD, "tenant-b", 60)
        users.grant(session, user, "tenant-b", "reader")
        with pytest.raises(InvalidInputError, match="name the project"):
            users.login(session, "alice", PASSWORD, None, 60)
        # The grant ended the earlier token.
        with pytest.raises(AuthError):
            authenticate_user(session, secret)

        secret, token = users.login(session, "alice", PASSWORD, "tenant-b", 60)
        token.expires_at = token.created_at - timedelta(seconds=1)
        session.flush()
        with pytest.raises(TokenExpiredError, match="expired at"):
            authenticate_user(session, secret)


def test_role_changes_revoke_what_the_user_may_no_longer_hold(tmp_path: Path) -> None:
    maker = sessions(tmp_path)
    with maker.begin() as session:
        ensure_project(session, "tenant-a")
        user = users.create_user(session, "bob", PASSWORD)
        users.grant(session, user, "tenant-a", "member")
        _, login = users.login(session, "bob", PASSWORD, None, 60)
        _, member_key = api_keys.create_key(session, login, "ci", "tenant-a", "member")
        _, reader_key = api_keys.create_key(session, login, "ro", "tenant-a", "reader")
        users.grant(session, user, "tenant-a", "reader")
        assert session.get(ApiToken, member_key.id) is None
        assert session.get(ApiToken, reader_key.id) is not None
        assert users.revoke(session, user, "tenant-a")
        assert session.get(ApiToken, reader_key.id) is None
        assert not users.revoke(session, user, "tenant-a")


def test_an_unknown_user_costs_a_hash_check_too(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    checks: list[str] = []
    real = _passwords.verify_password

    def counting(stored: str, password: str) -> bool:
        checks.append(stored)
        return real(stored, password)

    monkeypatch.setattr(_passwords, "verify_password", counting)
    with sessions(tmp_path).begin() as session, pytest.raises(AuthError):
        users.login(session, "nobody", PASSWORD, None, 60)
    assert len(checks) == 1 and checks[0].startswith("$argon2id$")
