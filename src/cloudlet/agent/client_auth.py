"""Who is calling the site-local API: the site's operator or a client with a token the
controller signed, checked here against the public keys held in the store (so it works
with the controller unreachable).

The keys arrive in every desired-state document (``client_keys``, always the full set)
and are stored with it, with the ids of the tokens revoked before their expiry
(``client_revoked``); a site restarted while cut off still has both.
"""

from __future__ import annotations

import hmac
import json
import sqlite3
from dataclasses import dataclass

from cloudlet.agent.store import Store, set_meta
from cloudlet.errors import AuthError, TokenRevokedError
from cloudlet.schemas.client_tokens import ClientKey
from cloudlet.schemas.common import bearer_secret
from cloudlet.tokens import ClientClaims, Verifier

#: Meta key: the client-token public keys (a JSON list of JWKs; absent: none yet).
CLIENT_KEYS = "client_keys"
#: Meta key: the ids of revoked client tokens (a JSON list; absent: none).
CLIENT_REVOKED = "client_revoked"


def store_keys(conn: sqlite3.Connection, keys: list[ClientKey]) -> None:
    """Replace the held keys, inside the transaction that stores a desired document."""
    set_meta(conn, CLIENT_KEYS, json.dumps([k.model_dump(mode="json") for k in keys]))


def store_revoked(conn: sqlite3.Connection, jtis: list[str]) -> None:
    """Replace the revoked token ids held, inside the desired document's transaction."""
    set_meta(conn, CLIENT_REVOKED, json.dumps(sorted(jtis)))


def held_kids(store: Store) -> list[str]:
    """The ids of the keys this site checks client tokens with (for /healthz)."""
    raw = store.get_meta(CLIENT_KEYS)
    return [k["kid"] for k in json.loads(raw)] if raw else []


@dataclass(frozen=True)
class Caller:
    """The operator (the site-local token, or anyone on loopback) or a token's client."""

    client: ClientClaims | None = None

    @property
    def operator(self) -> bool:
        return self.client is None


OPERATOR = Caller()


def _looks_signed(secret: str) -> bool:
    return secret.count(".") == 2


class ClientAuth:
    """Authenticates local API callers.

    Args:
        store: where the public keys are held.
        operator_token: the site-local token (None: the API is bound to loopback, and a
            caller without a client token is the operator).
    """

    def __init__(self, store: Store, operator_token: str | None) -> None:
        self._store = store
        self._operator_token = operator_token
        self._raw: str | None = None
        self._verifier = Verifier([])
        self._raw_revoked: str | None = None
        self._revoked: frozenset[str] = frozenset()

    def verifier(self) -> Verifier:
        """A verifier over the keys held now (parsed again only when they changed)."""
        raw = self._store.get_meta(CLIENT_KEYS)
        if raw != self._raw:
            keys = [ClientKey.model_validate(k) for k in json.loads(raw)] if raw else []
            self._verifier, self._raw = Verifier(keys), raw
        return self._verifier

    def revoked(self) -> frozenset[str]:
        """The ids of the revoked tokens held now (parsed again only when they changed)."""
        raw = self._store.get_meta(CLIENT_REVOKED)
        if raw != self._raw_revoked:
            self._revoked, self._raw_revoked = frozenset(json.loads(raw) if raw else ()), raw
        return self._revoked

    def caller(self, authorization: str | None) -> Caller:
        """Who sent a request with this ``Authorization`` header.

        A client token presented is always checked, on loopback too: a bad one is
        refused, never taken for no token at all.

        Raises:
            AuthError: no credential where one is needed, a wrong site-local token, or
                a client token that is malformed, signed by a key this site does not
                hold, tampered with, (TokenExpiredError) expired or (TokenRevokedError)
                revoked.
        """
        given = bearer_secret(authorization)
        token = self._operator_token
        if (
            given is not None
            and token is not None
            and hmac.compare_digest(given.encode(), token.encode())
        ):
            return OPERATOR
        if given is not None and _looks_signed(given):
            verifier = self.verifier()
            if not len(verifier):
                raise AuthError(
                    "this site holds no client-token keys yet (it has not synced with its "
                    "controller since it enrolled)"
                )
            claims = verifier.verify(given)
            if claims.jti in self.revoked():
                raise TokenRevokedError(f"client token {claims.jti} was revoked")
            return Caller(claims)
        if token is None:
            return OPERATOR
        if given is None:
            raise AuthError("starting or changing instances here needs a client token")
        raise AuthError("neither a client token nor the site-local token")
