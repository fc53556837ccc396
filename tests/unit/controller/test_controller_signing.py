"""The controller's side of signed artifacts: keys, signatures checked before they are
stored, the policy, and what each desired VM instance carries to its site."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from controller_fakes import enrolled_site, sessions
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cloudlet.controller.db.models import ArtifactSignature, Image, Overlay
from cloudlet.controller.services import catalog, instances, signing, sync
from cloudlet.controller.services._util import utcnow
from cloudlet.controller.services.projects import ensure_project
from cloudlet.errors import ConflictError, InvalidInputError, NotFoundError, SignatureError
from cloudlet.schemas import AppCreate, DesiredInstance, InstanceCreate
from cloudlet.schemas.artifacts import ArtifactKind
from cloudlet.schemas.signing import PublisherKeyCreate, SignatureCreate
from cloudlet.signing import PublisherKey

IMAGE, OVERLAY = "1a" * 32, "2b" * 32
IMG, OVL = ArtifactKind.IMAGE, ArtifactKind.OVERLAY


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    maker = sessions(tmp_path)
    with maker.begin() as s:
        enrolled_site(s)
        for project in ("fire", "water"):
            ensure_project(s, project)
        now = utcnow()
        s.add(Image(digest=IMAGE, project="fire", name="base", size=1, created_at=now))
        s.flush()
        s.add(
            Overlay(
                id=OVERLAY, project="fire", name="app", base_digest=IMAGE, size=1,
                disk_size=1, memory_size=None, memory_base_digest=None, resumable=False,
                created_at=now,
            )
        )  # fmt: skip
        comp = {"kind": "vm", "image": IMAGE, "overlay": OVERLAY}
        catalog.create_app(s, "fire", AppCreate(name="vmapp", components=[comp]))
        catalog.create_app(s, "fire", AppCreate(name="proc", components=[{"command": ["true"]}]))
        for app in ("vmapp", "proc"):
            instances.create_instance(s, "fire", InstanceCreate(app=app, site="lyon"), grace_s=30)
    s = maker()
    yield s
    s.close()


def register(session: Session, name: str, project: str = "fire") -> PublisherKey:
    key = PublisherKey.generate()
    signing.create_key(session, project, PublisherKeyCreate(name=name, public_key=key.x))
    return key


def sign(session: Session, key: PublisherKey, kind: ArtifactKind, digest: str) -> bool:
    row = session.get(Image if kind is IMG else Overlay, digest)
    assert row is not None
    body = SignatureCreate(kid=key.kid, signature=key.sign(kind, digest))
    return signing.add_signature(session, kind, row, body)[1]


def pulled(session: Session, since: int) -> tuple[int, dict[str, DesiredInstance]]:
    site = enrolled = session.scalar(select(sync.Site).where(sync.Site.name == "lyon"))
    assert enrolled is not None
    session.refresh(site)
    doc = sync.desired_doc(session, site, since)
    return doc.revision, {i.app: i for i in doc.instances}


def test_nothing_to_check_leaves_the_documents_as_they_were(session: Session) -> None:
    _, entries = pulled(session, 0)
    assert entries["vmapp"].signing is None and entries["proc"].signing is None


def test_each_change_reaches_the_vm_instance_in_the_next_delta(session: Session) -> None:
    rev, _ = pulled(session, 0)
    key = register(session, "release")
    assert sign(session, key, OVL, OVERLAY)
    assert not sign(session, key, OVL, OVERLAY)  # stored once
    rev2, entries = pulled(session, rev)
    assert set(entries) == {"vmapp"}  # the process instance has nothing to check
    info = entries["vmapp"].signing
    assert info is not None and not info.require_signatures
    trust = {(a.kind, a.digest): a for a in info.artifacts}
    assert [k.kid for k in trust[(OVL, OVERLAY)].keys] == [key.kid]
    assert [s.kid for s in trust[(OVL, OVERLAY)].signatures] == [key.kid]
    assert trust[(IMG, IMAGE)].signatures == []

    signing.set_policy(session, "fire", True)
    rev3, entries = pulled(session, rev2)
    assert entries["vmapp"].signing.require_signatures  # type: ignore[union-attr]
    assert set(entries) == {"vmapp"}  # only instances with something to check move
    assert signing.set_policy(session, "fire", True)[1] == set()  # no change, no bump

    signing.revoke_key(session, key.kid, "fire")
    _, entries = pulled(session, rev3)
    info = entries["vmapp"].signing
    assert info is not None
    overlay = next(a for a in info.artifacts if a.kind is OVL)
    # The key is gone, its signature still listed: the site says why it refuses.
    assert overlay.keys == [] and [s.kid for s in overlay.signatures] == [key.kid]


def test_only_a_live_key_of_the_artifacts_project_signs_its_digest(session: Session) -> None:
    fire, water = register(session, "release"), register(session, "w", "water")
    row = session.get(Overlay, OVERLAY)
    assert row is not None
    bad = [
        (water.kid, water.sign(OVL, OVERLAY), "not a publisher key of project 'fire'"),
        (fire.kid, fire.sign(IMG, OVERLAY), "does not verify"),
        (fire.kid, fire.sign(OVL, IMAGE), "does not verify"),
        (fire.kid, water.sign(OVL, OVERLAY), "does not verify"),
        (PublisherKey.generate().kid, fire.sign(OVL, OVERLAY), "not a publisher key"),
    ]
    for kid, sig, why in bad:
        with pytest.raises(SignatureError, match=why):
            signing.add_signature(session, OVL, row, SignatureCreate(kid=kid, signature=sig))
    signing.revoke_key(session, fire.kid, None)
    with pytest.raises(SignatureError, match="revoked"):
        sign(session, fire, OVL, OVERLAY)
    assert session.scalar(select(func.count()).select_from(ArtifactSignature)) == 0


def test_keys_are_checked_and_unique(session: Session) -> None:
    key = register(session, "release")
    with pytest.raises(ConflictError, match="registered already"):
        signing.create_key(session, "water", PublisherKeyCreate(name="x", public_key=key.x))
    other = PublisherKey.generate()
    with pytest.raises(ConflictError, match="has a publisher key 'release'"):
        signing.create_key(session, "fire", PublisherKeyCreate(name="release", public_key=other.x))
    short = PublisherKeyCreate.model_construct(name="y", project=None, public_key="A" * 42)
    with pytest.raises(InvalidInputError):
        signing.create_key(session, "fire", short)
    with pytest.raises(NotFoundError):
        signing.create_key(session, "nope", PublisherKeyCreate(name="z", public_key=other.x))
    with pytest.raises(NotFoundError):
        signing.revoke_key(session, key.kid, "water")  # another project's: not found
    assert [k.name for k in signing.list_keys(session, "fire")] == ["release"]
