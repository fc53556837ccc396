"""Sign and verify artifacts: a publisher's Ed25519 key signs an image's digest or an
overlay's manifest root digest; the controller checks a signature before it stores it,
and a site checks it again, offline, against the digest it actually received.

What is signed is :func:`message`: a domain tag, the artifact's kind and its 32-byte
digest, so that a signature can be replayed neither for the other kind of artifact nor
as anything else a key might sign (the tag names this purpose and its version)::

    b"cloudlet-artifact-v1\\0" + kind + b"\\0" + digest   (kind: b"image" or b"overlay")

Keys are named by their RFC 7638 thumbprint (:func:`cloudlet.tokens.thumbprint`), like
the controller's client-token keys; signatures and public keys travel as base64url.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from cloudlet.errors import SignatureError
from cloudlet.schemas.artifacts import ArtifactKind
from cloudlet.schemas.signing import ArtifactTrust
from cloudlet.tokens import ed25519_pem, load_ed25519_pem, thumbprint

DOMAIN = b"cloudlet-artifact-v1\0"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    """Raises ValueError for text that is not base64url."""
    if not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def message(kind: ArtifactKind | str, digest: str) -> bytes:
    """The bytes a signature of the artifact covers.

    Raises:
        ValueError: ``digest`` is not 64 lowercase-able hex digits, or ``kind`` unknown.
    """
    kind = ArtifactKind(kind)
    digest = digest.lower()
    if not _HEX64.match(digest):
        raise ValueError(f"not an artifact digest: {digest!r}")
    return DOMAIN + kind.value.encode() + b"\0" + bytes.fromhex(digest)


def key_id(x: str) -> str:
    """The id of the public key ``x`` (base64url): its RFC 7638 thumbprint."""
    return thumbprint(x)


def public_key(x: str) -> Ed25519PublicKey:
    """Raises ValueError when ``x`` is not a base64url Ed25519 public key."""
    raw = unb64(x)
    if len(raw) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


def verify(x: str, kind: ArtifactKind | str, digest: str, signature: str) -> bool:
    """Whether ``signature`` (base64url) is the key ``x``'s over the artifact."""
    try:
        key = public_key(x)
        raw = unb64(signature)
        key.verify(raw, message(kind, digest))
    except (InvalidSignature, ValueError):
        return False
    return True


class PublisherKey:
    """A publisher's Ed25519 key pair (the private half stays with the publisher)."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        raw = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.x = b64(raw)
        self.kid = key_id(self.x)

    @classmethod
    def generate(cls) -> PublisherKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, pem: bytes) -> PublisherKey:
        """Load a PKCS#8 PEM private key (no password).

        Raises:
            ConfigError: not a PEM Ed25519 private key.
        """
        return cls(load_ed25519_pem(pem, "a publisher key"))

    def to_pem(self) -> bytes:
        return ed25519_pem(self._private)

    def sign(self, kind: ArtifactKind | str, digest: str) -> str:
        """The signature (base64url) over :func:`message` of the artifact."""
        return b64(self._private.sign(message(kind, digest)))


@dataclass(frozen=True)
class Verified:
    """An artifact that passed: the keys whose signatures checked out (maybe none)."""

    kind: ArtifactKind
    digest: str
    signed_by: tuple[str, ...]


def check_artifact(
    kind: ArtifactKind,
    digest: str,
    trust: Iterable[ArtifactTrust],
    require: bool,
    project: str,
) -> Verified:
    """Check the signatures a site holds for the artifact whose digest it computed.

    Every signature listed for ``(kind, digest)`` must be by one of the keys listed with
    it (its project's non-revoked keys) and verify over ``digest``: a bad one fails
    whatever the policy. With ``require``, at least one must be there. Signatures listed
    for another digest (the controller's claim about bytes that are not these) count
    for nothing.

    Raises:
        SignatureError: unsigned while required, or a signature that does not hold.
    """
    digest = digest.lower()
    what = f"{kind.value} {digest[:16]}"
    mine = [t for t in trust if t.kind is kind and t.digest.lower() == digest]
    good: list[str] = []
    for entry in mine:
        keys = {k.kid: k.x for k in entry.keys}
        for sig in entry.signatures:
            x = keys.get(sig.kid)
            if x is None:
                raise SignatureError(
                    f"{what} is signed by key {sig.kid}, which is not a key of its "
                    "project (unknown or revoked): refused"
                )
            if not verify(x, kind, digest, sig.signature):
                raise SignatureError(
                    f"{what}: the signature by key {sig.kid} does not verify over the "
                    "digest received (the artifact was altered, or signed as something "
                    "else): refused"
                )
            good.append(sig.kid)
    if require and not good:
        claimed = [t for t in trust if t.kind is kind and t.digest.lower() != digest]
        why = (
            " (the signatures held are for another digest: the bytes received are not the "
            "ones signed)"
            if claimed
            else ""
        )
        raise SignatureError(
            f"{what} is not signed, and project {project!r} requires signatures{why}: refused"
        )
    return Verified(kind, digest, tuple(good))
