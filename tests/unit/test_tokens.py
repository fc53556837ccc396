"""Client tokens signed and checked: what passes, and every way one must not."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloudlet.errors import AuthError, ConfigError, ForbiddenError, TokenExpiredError
from cloudlet.tokens import ISSUER, TOKEN_TYPE, SigningKey, Verifier, thumbprint

PRIVATE = Ed25519PrivateKey.generate()
KEY = SigningKey(PRIVATE)


def _payload(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "sub": "tablet-7",
        "project": "fire",
        "apps": ["maps"],
        "iat": now,
        "exp": now + 600,
        "jti": "j1",
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def _raw(payload: dict[str, Any], **headers: Any) -> str:
    head = {"kid": KEY.kid, "typ": TOKEN_TYPE} | headers
    return jwt.encode(payload, PRIVATE, algorithm="EdDSA", headers=head)


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_a_signed_token_verifies_with_its_claims() -> None:
    token, minted = KEY.sign("fire", ["maps", "radio", "maps"], 3600, subject="tablet-7")
    claims = Verifier([KEY.public]).verify(token)
    assert claims == minted
    assert (claims.project, claims.apps, claims.subject) == ("fire", ("maps", "radio"), "tablet-7")
    assert claims.kid == KEY.kid and len(claims.jti) >= 16
    assert (claims.expires_at - claims.issued_at).total_seconds() == 3600
    claims.require_app("radio")
    with pytest.raises(ForbiddenError, match="does not name app 'chat'"):
        claims.require_app("chat")


def test_the_kid_is_the_rfc7638_thumbprint() -> None:
    # RFC 8037 appendix A.3: the thumbprint of its Ed25519 example key.
    x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
    assert thumbprint(x) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
    assert KEY.public.kid == thumbprint(KEY.public.x)


def test_an_expired_token_is_refused() -> None:
    token, _ = KEY.sign("fire", ["maps"], 60, now=time.time() - 3600)
    with pytest.raises(TokenExpiredError):
        Verifier([KEY.public]).verify(token)


def test_a_token_within_the_clock_leeway_still_passes() -> None:
    token, _ = KEY.sign("fire", ["maps"], 60, now=time.time() - 90)  # expired 30 s ago
    assert Verifier([KEY.public]).verify(token).project == "fire"


def test_a_tampered_payload_is_refused() -> None:
    token, _ = KEY.sign("fire", ["maps"], 600)
    head, _, sig = token.split(".")
    forged = _b64(_payload(apps=["maps", "everything"]))
    with pytest.raises(AuthError, match="invalid client token"):
        Verifier([KEY.public]).verify(f"{head}.{forged}.{sig}")


def test_a_tampered_signature_is_refused() -> None:
    token, _ = KEY.sign("fire", ["maps"], 600)
    head, body, sig = token.split(".")
    flipped = ("B" if sig[0] == "A" else "A") + sig[1:]
    with pytest.raises(AuthError, match="invalid client token"):
        Verifier([KEY.public]).verify(f"{head}.{body}.{flipped}")


def test_a_token_of_another_key_is_refused() -> None:
    other = SigningKey.generate()
    token, _ = other.sign("fire", ["maps"], 600)
    with pytest.raises(AuthError, match="unknown key"):
        Verifier([KEY.public]).verify(token)
    # ...and one that claims our kid but was signed by the other key.
    forged = jwt.encode(
        _payload(), other._private, algorithm="EdDSA", headers={"kid": KEY.kid, "typ": TOKEN_TYPE}
    )
    with pytest.raises(AuthError, match="invalid client token"):
        Verifier([KEY.public]).verify(forged)
    assert Verifier([KEY.public, other.public]).verify(token).project == "fire"


@pytest.mark.parametrize("missing", ["iss", "sub", "project", "apps", "iat", "exp", "jti"])
def test_a_token_missing_a_claim_is_refused(missing: str) -> None:
    with pytest.raises(AuthError):
        Verifier([KEY.public]).verify(_raw(_payload(**{missing: None})))


@pytest.mark.parametrize(
    "changes",
    [{"apps": "maps"}, {"apps": []}, {"apps": [1]}, {"project": 7}, {"iss": "someone-else"}],
)
def test_a_token_with_a_wrong_claim_is_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(AuthError):
        Verifier([KEY.public]).verify(_raw(_payload(**changes)))


def test_alg_none_and_other_algorithms_are_refused() -> None:
    unsigned = f"{_b64({'alg': 'none', 'kid': KEY.kid, 'typ': TOKEN_TYPE})}.{_b64(_payload())}."
    with pytest.raises(AuthError, match="not none"):
        Verifier([KEY.public]).verify(unsigned)
    # HS256 keyed with the public key: the classic confusion attack.
    hs = jwt.encode(
        _payload(), KEY.public.x.encode() * 2, algorithm="HS256",
        headers={"kid": KEY.kid, "typ": TOKEN_TYPE},
    )  # fmt: skip
    with pytest.raises(AuthError, match="not HS256"):
        Verifier([KEY.public]).verify(hs)


def test_another_token_type_or_garbage_is_refused() -> None:
    with pytest.raises(AuthError, match="typ"):
        Verifier([KEY.public]).verify(_raw(_payload(), typ="JWT"))
    for garbage in ("a.b.c", "not-a-token", ""):
        with pytest.raises(AuthError):
            Verifier([KEY.public]).verify(garbage)


def test_the_key_round_trips_through_pem_and_bad_pem_is_a_config_error() -> None:
    again = SigningKey.from_pem(KEY.to_pem().encode())
    assert again.kid == KEY.kid
    token, _ = again.sign("fire", ["maps"], 600)
    assert Verifier([KEY.public]).verify(token).apps == ("maps",)
    with pytest.raises(ConfigError):
        SigningKey.from_pem(b"-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
