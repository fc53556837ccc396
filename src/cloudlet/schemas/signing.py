"""Signed artifacts: publisher keys, signatures over an image's or overlay's digest, the
per-project policy, and what a site is given to verify them offline."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import Field, StrictBool

from cloudlet.schemas._base import Input, Model
from cloudlet.schemas.artifacts import ArtifactKind
from cloudlet.schemas.common import Name, Project

#: A publisher key's id: the RFC 7638 thumbprint of its public key (base64url, 43 chars).
KeyId = Annotated[str, Field(min_length=43, max_length=43, pattern=r"^[A-Za-z0-9_-]+$")]
#: An Ed25519 public key, raw, base64url without padding.
PublicKeyX = Annotated[str, Field(min_length=43, max_length=43, pattern=r"^[A-Za-z0-9_-]+$")]
#: An Ed25519 signature, raw (64 bytes), base64url without padding.
SignatureB64 = Annotated[str, Field(min_length=86, max_length=86, pattern=r"^[A-Za-z0-9_-]+$")]


class PublisherKeyCreate(Input):
    """Register the public half of a key pair made by the publisher (`cloudlet key create`)."""

    name: Name
    project: Project | None = Field(None, description="Defaults to the caller's project.")
    public_key: PublicKeyX = Field(description="The Ed25519 public key, base64url (raw).")


class PublisherKey(Model):
    """A registered publisher key: sites accept signatures by it on its project's artifacts
    until it is revoked."""

    kid: str = Field(description="RFC 7638 thumbprint of the public key.")
    name: str
    project: str
    public_key: str
    created_at: datetime
    revoked_at: datetime | None = None


class PublisherKeyRevoke(Input):
    """Revoke a publisher key by its id (``kid``)."""

    kid: KeyId


class SignatureCreate(Input):
    """A signature over :func:`cloudlet.signing.message` of the artifact's kind and digest."""

    kid: KeyId = Field(description="The publisher key that made it (registered, not revoked).")
    signature: SignatureB64


class ArtifactSignature(Model):
    """A stored signature of an image or overlay."""

    kind: ArtifactKind
    digest: str = Field(description="The image's digest or the overlay's root digest.")
    kid: str
    key_name: str
    key_revoked: bool = Field(description="Its key was revoked: sites refuse it.")
    signature: str
    created_at: datetime


class SigningPolicyUpdate(Input):
    require_signatures: StrictBool = Field(
        description="Sites refuse to synthesize or boot an unsigned image or overlay for "
        "this project's instances."
    )


class SigningPolicy(Model):
    project: str
    require_signatures: bool
    updated_at: datetime | None = None


# --- what a site is given (in each desired instance) ------------------------------------


class TrustedKey(Model):
    """A non-revoked publisher key of an artifact's project."""

    kid: str
    x: str = Field(description="The Ed25519 public key, base64url (raw).")


class SignatureEntry(Model):
    kid: str
    signature: str


class ArtifactTrust(Model):
    """One artifact of an instance: its signatures and the keys that may have made them."""

    kind: ArtifactKind
    digest: str
    keys: list[TrustedKey] = Field(default_factory=list)
    signatures: list[SignatureEntry] = Field(default_factory=list)


class InstanceSigning(Model):
    """What a site checks before it synthesizes or boots an instance's VM components."""

    require_signatures: bool = Field(description="The instance's project's policy.")
    artifacts: list[ArtifactTrust] = Field(default_factory=list)
