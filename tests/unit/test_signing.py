"""Artifact signatures made and checked: what passes, and every way one must not."""

from __future__ import annotations

import pytest

from cloudlet.errors import ConfigError, SignatureError
from cloudlet.schemas.artifacts import ArtifactKind
from cloudlet.schemas.signing import ArtifactTrust, SignatureEntry, TrustedKey
from cloudlet.signing import DOMAIN, PublisherKey, check_artifact, key_id, message, verify
from cloudlet.tokens import thumbprint

KEY = PublisherKey.generate()
OTHER = PublisherKey.generate()
DIGEST = "3f" * 32
ELSE = "a0" * 32
IMAGE, OVERLAY = ArtifactKind.IMAGE, ArtifactKind.OVERLAY


def trust(
    kind: ArtifactKind = OVERLAY,
    digest: str = DIGEST,
    keys: tuple[PublisherKey, ...] = (KEY,),
    sigs: tuple[tuple[PublisherKey, str], ...] = (),
) -> ArtifactTrust:
    return ArtifactTrust(
        kind=kind,
        digest=digest,
        keys=[TrustedKey(kid=k.kid, x=k.x) for k in keys],
        signatures=[SignatureEntry(kid=k.kid, signature=s) for k, s in sigs],
    )


def test_the_message_is_domain_separated_by_purpose_kind_and_digest() -> None:
    assert message("overlay", DIGEST) == DOMAIN + b"overlay\0" + bytes.fromhex(DIGEST)
    assert message(IMAGE, DIGEST) != message(OVERLAY, DIGEST)
    assert message(OVERLAY, DIGEST.upper()) == message(OVERLAY, DIGEST)
    for bad in ("", "3f" * 31, "zz" * 32, "3f" * 33):
        with pytest.raises(ValueError):
            message(OVERLAY, bad)
    with pytest.raises(ValueError):
        message("checkpoint", DIGEST)


def test_a_signature_verifies_only_for_its_key_kind_and_digest() -> None:
    sig = KEY.sign(OVERLAY, DIGEST)
    assert verify(KEY.x, OVERLAY, DIGEST, sig)
    assert not verify(KEY.x, OVERLAY, ELSE, sig)  # tampered digest
    assert not verify(KEY.x, IMAGE, DIGEST, sig)  # replayed for the other kind
    assert not verify(OTHER.x, OVERLAY, DIGEST, sig)  # another key
    flipped = ("B" if sig[0] == "A" else "A") + sig[1:]
    assert not verify(KEY.x, OVERLAY, DIGEST, flipped)
    assert not verify(KEY.x, OVERLAY, DIGEST, "not base64!")
    assert not verify("short", OVERLAY, DIGEST, sig)


def test_keys_round_trip_through_pem_and_are_named_by_their_thumbprint() -> None:
    again = PublisherKey.from_pem(KEY.to_pem())
    assert (again.kid, again.x) == (KEY.kid, KEY.x)
    assert KEY.kid == key_id(KEY.x) == thumbprint(KEY.x)
    assert verify(KEY.x, IMAGE, DIGEST, again.sign(IMAGE, DIGEST))
    with pytest.raises(ConfigError):
        PublisherKey.from_pem(b"-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")


def test_a_signed_artifact_passes_with_the_policy_on_or_off() -> None:
    held = [trust(sigs=((KEY, KEY.sign(OVERLAY, DIGEST)),))]
    for require in (True, False):
        assert check_artifact(OVERLAY, DIGEST, held, require, "fire").signed_by == (KEY.kid,)


def test_unsigned_fails_only_when_required() -> None:
    assert check_artifact(OVERLAY, DIGEST, [trust()], False, "fire").signed_by == ()
    assert check_artifact(OVERLAY, DIGEST, [], False, "fire").signed_by == ()
    with pytest.raises(SignatureError, match="not signed, and project 'fire' requires"):
        check_artifact(OVERLAY, DIGEST, [trust()], True, "fire")


@pytest.mark.parametrize("require", [True, False])
def test_a_bad_signature_fails_whatever_the_policy(require: bool) -> None:
    wrong_kind = [trust(sigs=((KEY, KEY.sign(IMAGE, DIGEST)),))]
    with pytest.raises(SignatureError, match="does not verify"):
        check_artifact(OVERLAY, DIGEST, wrong_kind, require, "fire")
    wrong_key = [trust(sigs=((KEY, OTHER.sign(OVERLAY, DIGEST)),))]
    with pytest.raises(SignatureError, match="does not verify"):
        check_artifact(OVERLAY, DIGEST, wrong_key, require, "fire")
    # A key not among the project's (unknown, or revoked: the controller drops those).
    revoked = [trust(keys=(), sigs=((KEY, KEY.sign(OVERLAY, DIGEST)),))]
    with pytest.raises(SignatureError, match="unknown or revoked"):
        check_artifact(OVERLAY, DIGEST, revoked, require, "fire")


def test_a_signature_listed_under_the_digest_received_must_verify_over_it() -> None:
    # The controller lists the overlay's signature, but the bytes received hash to
    # ELSE: a signature made over DIGEST, relabelled, does not pass for ELSE.
    relabelled = [trust(digest=ELSE, sigs=((KEY, KEY.sign(OVERLAY, DIGEST)),))]
    with pytest.raises(SignatureError, match="does not verify over the digest received"):
        check_artifact(OVERLAY, ELSE, relabelled, False, "fire")


def test_signatures_of_another_digest_count_for_nothing() -> None:
    # What the site assembled (ELSE) is not what was signed (DIGEST): refused when
    # signatures are required, and the reason says so.
    held = [trust(sigs=((KEY, KEY.sign(OVERLAY, DIGEST)),))]
    with pytest.raises(SignatureError, match="another digest"):
        check_artifact(OVERLAY, ELSE, held, True, "fire")
    assert check_artifact(OVERLAY, ELSE, held, False, "fire").signed_by == ()


def test_the_image_and_the_overlay_are_checked_apart() -> None:
    held = [
        trust(kind=IMAGE, sigs=((KEY, KEY.sign(IMAGE, DIGEST)),)),
        trust(kind=OVERLAY, digest=ELSE),
    ]
    assert check_artifact(IMAGE, DIGEST, held, True, "fire").signed_by == (KEY.kid,)
    with pytest.raises(SignatureError, match=f"overlay {ELSE[:16]} is not signed"):
        check_artifact(OVERLAY, ELSE, held, True, "fire")
