"""Sign and check client tokens: compact JWS (EdDSA over Ed25519) the controller signs and
sites verify with its public keys alone, so that a site cut off from the controller still
knows who may start what.

A token's header names its key (``kid``, the RFC 7638 thumbprint of the public key) and
its type (``typ``: :data:`TOKEN_TYPE`, so that no other JWT signed with the same key
passes for one); its claims are ``iss`` (:data:`ISSUER`), ``sub``, ``project``, ``apps``,
``iat``, ``exp`` and ``jti``, all required. The controller imports :class:`SigningKey`, the
agent :class:`Verifier`; both share only this module and the wire schemas.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from cloudlet.errors import AuthError, ConfigError, ForbiddenError, TokenExpiredError
from cloudlet.schemas.client_tokens import ClientKey

ISSUER = "cloudlet"
TOKEN_TYPE = "cloudlet-client+jwt"
ALGORITHM = "EdDSA"
#: Clock skew tolerated between the controller and a site (a site offline for weeks
#: may have drifted).
LEEWAY_S = 60
_REQUIRED = ["iss", "sub", "project", "apps", "iat", "exp", "jti"]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def load_ed25519_pem(pem: bytes, what: str) -> Ed25519PrivateKey:
    """An Ed25519 private key from PKCS#8 PEM (no password); ``what`` names it in errors.

    Raises:
        ConfigError: not a PEM Ed25519 private key.
    """
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"not a PEM private key without a password: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{what} must be an Ed25519 key")
    return key


def ed25519_pem(key: Ed25519PrivateKey) -> bytes:
    """The key as PKCS#8 PEM, unencrypted (the file's mode protects it)."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def thumbprint(x: str) -> str:
    """The RFC 7638 thumbprint of an Ed25519 public key given as base64url ``x``."""
    canonical = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": x}, separators=(",", ":"))
    return _b64(hashlib.sha256(canonical.encode()).digest())


@dataclass(frozen=True)
class ClientClaims:
    """What a verified client token says."""

    kid: str
    jti: str
    subject: str
    project: str
    apps: tuple[str, ...]
    issued_at: datetime
    expires_at: datetime

    def require_app(self, app: str) -> None:
        """Raises ForbiddenError unless the token names ``app``."""
        if app not in self.apps:
            raise ForbiddenError(
                f"the client token does not name app {app!r} (it names {', '.join(self.apps)})"
            )


class SigningKey:
    """The controller's Ed25519 key for client tokens."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        raw = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.public = ClientKey(kid=thumbprint(_b64(raw)), x=_b64(raw))

    @property
    def kid(self) -> str:
        return self.public.kid

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, pem: bytes) -> SigningKey:
        """Load a PKCS#8 PEM private key.

        Raises:
            ConfigError: not a PEM Ed25519 private key.
        """
        return cls(load_ed25519_pem(pem, "the client-token signing key"))

    def to_pem(self) -> str:
        return ed25519_pem(self._private).decode()

    def sign(
        self,
        project: str,
        apps: Iterable[str],
        ttl_s: int,
        subject: str | None = None,
        now: float | None = None,
    ) -> tuple[str, ClientClaims]:
        """A signed token for ``apps`` of ``project``, valid ``ttl_s`` seconds from ``now``."""
        issued = int(time.time() if now is None else now)
        claims = ClientClaims(
            kid=self.kid,
            # Hex, not base64url: an id starting with '-' reads as an option to a CLI.
            jti=secrets.token_hex(16),
            subject=subject or f"client-{secrets.token_hex(6)}",
            project=project,
            apps=tuple(dict.fromkeys(apps)),
            issued_at=datetime.fromtimestamp(issued, UTC),
            expires_at=datetime.fromtimestamp(issued + ttl_s, UTC),
        )
        payload = {
            "iss": ISSUER,
            "sub": claims.subject,
            "project": project,
            "apps": list(claims.apps),
            "iat": issued,
            "exp": issued + ttl_s,
            "jti": claims.jti,
        }
        headers = {"kid": self.kid, "typ": TOKEN_TYPE}
        return jwt.encode(payload, self._private, algorithm=ALGORITHM, headers=headers), claims


class Verifier:
    """Checks client tokens against a set of public keys (no network, no database)."""

    def __init__(self, keys: Iterable[ClientKey]) -> None:
        self._keys: dict[str, Ed25519PublicKey] = {}
        for key in keys:
            self._keys[key.kid] = Ed25519PublicKey.from_public_bytes(_unb64(key.x))
        self._jwt = jwt.PyJWT(
            options={"require": _REQUIRED, "verify_signature": True, "verify_exp": True}
        )

    def __len__(self) -> int:
        return len(self._keys)

    def verify(self, token: str) -> ClientClaims:
        """The claims of a token signed by one of the keys, unexpired.

        Raises:
            TokenExpiredError: past its ``exp`` (beyond :data:`LEEWAY_S`).
            AuthError: malformed, another algorithm (``none`` included), another type,
                an unknown key, a bad signature, a claim missing or of the wrong type.
        """
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AuthError(f"not a client token: {exc}") from exc
        if header.get("alg") != ALGORITHM:
            raise AuthError(f"client tokens are signed with {ALGORITHM}, not {header.get('alg')}")
        if header.get("typ") != TOKEN_TYPE:
            raise AuthError(f"not a client token (typ {header.get('typ')!r})")
        key = self._keys.get(header.get("kid"))  # type: ignore[arg-type]
        if key is None:
            raise AuthError(f"client token signed by an unknown key {header.get('kid')!r}")
        try:
            claims: dict[str, Any] = self._jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                issuer=ISSUER,
                leeway=LEEWAY_S,
            )
        except jwt.ExpiredSignatureError as exc:
            raise TokenExpiredError("the client token has expired") from exc
        except jwt.PyJWTError as exc:
            raise AuthError(f"invalid client token: {exc}") from exc
        return _claims(header["kid"], claims)


def _claims(kid: str, claims: dict[str, Any]) -> ClientClaims:
    project, apps, sub, jti = claims["project"], claims["apps"], claims["sub"], claims["jti"]
    if not (
        isinstance(project, str)
        and isinstance(sub, str)
        and isinstance(jti, str)
        and isinstance(apps, list)
        and apps
        and all(isinstance(a, str) for a in apps)
        and isinstance(claims["exp"], int)
    ):
        raise AuthError("invalid client token: a claim has the wrong type")
    return ClientClaims(
        kid=kid,
        jti=jti,
        subject=sub,
        project=project,
        apps=tuple(apps),
        issued_at=datetime.fromtimestamp(claims["iat"], UTC),
        expires_at=datetime.fromtimestamp(claims["exp"], UTC),
    )
