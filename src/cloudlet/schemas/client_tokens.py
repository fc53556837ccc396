"""Client tokens: what the controller signs for an app's end users, and the keys sites check
them with (a JWK set of Ed25519 public keys)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field

from cloudlet.schemas._base import Input, Model
from cloudlet.schemas.common import Name, Project

#: The longest a client token may live: a site cut off from its controller learns of
#: a revocation only when its link returns, so the expiry bounds what it may accept.
MAX_TTL_S = 30 * 24 * 3600
DEFAULT_TTL_S = 8 * 3600

Subject = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$")]


class ClientTokenCreate(Input):
    """Mint a client token: the project it is metered to, the apps it may start."""

    project: Project
    apps: list[Name] = Field(min_length=1, max_length=64, description="Apps of the project.")
    ttl_s: int = Field(DEFAULT_TTL_S, ge=60, le=MAX_TTL_S, description="Lifetime in seconds.")
    subject: Subject | None = Field(
        None, description="Who carries it (a device, a person); a random id when omitted."
    )


class ClientToken(Model):
    """A minted client token (a compact JWS, EdDSA) and what it says."""

    token: str = Field(description="The token; shown once, not stored by the controller.")
    kid: str = Field(description="The id of the key that signed it.")
    jti: str
    subject: str
    project: str
    apps: list[str]
    issued_at: datetime
    expires_at: datetime


class ClientTokenRevoke(Input):
    """Revoke a client token by its id (``jti``, from the list of the project's tokens)."""

    jti: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")


class ClientTokenInfo(Model):
    """What a minted client token says, as the controller recorded it (not the token)."""

    jti: str
    subject: str
    project: str
    apps: list[str]
    kid: str = Field(description="The key that signed it.")
    issued_at: datetime
    expires_at: datetime
    revoked_at: datetime | None = Field(
        None, description="When it was revoked; sites refuse it from their next pull on."
    )


class ClientKey(Model):
    """One public key client tokens are signed with, as a JWK (RFC 8037, OKP)."""

    kty: Literal["OKP"] = "OKP"
    crv: Literal["Ed25519"] = "Ed25519"
    alg: Literal["EdDSA"] = "EdDSA"
    use: Literal["sig"] = "sig"
    kid: str = Field(min_length=1, max_length=64, description="RFC 7638 thumbprint.")
    x: str = Field(min_length=43, max_length=43, description="The public key, base64url.")


class ClientKeySet(Model):
    """The JWK set sites verify client tokens with."""

    keys: list[ClientKey]
