"""/v1/publisher-keys, /v1/{images,overlays}/{ref}/signatures and
/v1/projects/{name}/signing-policy: signed artifacts."""

from __future__ import annotations

from fastapi import APIRouter, Query, Response, status

from cloudlet.controller.api.deps import DB, State, User, require_admin, scope_project
from cloudlet.controller.db.models import ArtifactSignature as SignatureRow
from cloudlet.controller.db.models import Image as ImageRow
from cloudlet.controller.db.models import Overlay as OverlayRow
from cloudlet.controller.db.models import PublisherKey as KeyRow
from cloudlet.controller.services import artifacts, signing
from cloudlet.errors import ForbiddenError, NotFoundError
from cloudlet.schemas import DEFAULT_PROJECT
from cloudlet.schemas.artifacts import ArtifactKind
from cloudlet.schemas.common import Project
from cloudlet.schemas.signing import (
    ArtifactSignature,
    PublisherKey,
    PublisherKeyCreate,
    PublisherKeyRevoke,
    SignatureCreate,
    SigningPolicy,
    SigningPolicyUpdate,
)

router = APIRouter(prefix="/v1", tags=["signing"])


def _key(row: KeyRow) -> PublisherKey:
    return PublisherKey.model_validate(row)


def _signature(row: SignatureRow, key: KeyRow) -> ArtifactSignature:
    return ArtifactSignature(
        kind=ArtifactKind(row.kind),
        digest=row.digest,
        kid=row.kid,
        key_name=key.name,
        key_revoked=key.revoked_at is not None,
        signature=row.signature,
        created_at=row.created_at,
    )


# --- publisher keys ---------------------------------------------------------------------


@router.post("/publisher-keys", status_code=status.HTTP_201_CREATED, response_model=PublisherKey)
def create_publisher_key(body: PublisherKeyCreate, session: DB, user: User) -> PublisherKey:
    """Register a publisher's public key: it may then sign the project's images and
    overlays. Members for their project, admins for any."""
    project = scope_project(user, body.project) or DEFAULT_PROJECT
    if body.project and body.project != project:
        raise ForbiddenError(f"publisher keys for project {body.project!r} need the admin role")
    key = signing.create_key(session, project, body)
    session.commit()
    return _key(key)


@router.get("/publisher-keys", response_model=list[PublisherKey])
def list_publisher_keys(
    session: DB,
    user: User,
    project: Project | None = Query(None, description="Only this project's (admins)."),
) -> list[PublisherKey]:
    """The caller's project's publisher keys (admins: every project's), revoked ones too."""
    return [_key(k) for k in signing.list_keys(session, scope_project(user, project))]


@router.post("/publisher-keys/revocations", response_model=PublisherKey)
def revoke_publisher_key(
    body: PublisherKeyRevoke, session: DB, user: User, st: State
) -> PublisherKey:
    """Revoke a publisher key: every site refuses its signatures from its next pull on
    (whatever the project's policy). Revoking twice changes nothing."""
    key, sites = signing.revoke_key(session, body.kid, scope_project(user))
    session.commit()
    for site_id in sites:
        st.watcher.notify(site_id)
    return _key(key)


# --- signatures -------------------------------------------------------------------------


def _artifact(session: DB, user: User, kind: ArtifactKind, ref: str) -> ImageRow | OverlayRow:
    project = scope_project(user)
    row: ImageRow | OverlayRow | None
    if kind is ArtifactKind.IMAGE:
        row = artifacts.get_image(session, project, ref)
    else:
        row = artifacts.get_overlay(session, project, ref)
    if row is None:
        raise NotFoundError(f"{kind.value} {ref!r} not found")
    return row


def _digest(row: ImageRow | OverlayRow) -> str:
    return row.digest if isinstance(row, ImageRow) else row.id


def _sign(
    kind: ArtifactKind,
    ref: str,
    body: SignatureCreate,
    response: Response,
    session: DB,
    user: User,
    st: State,
) -> ArtifactSignature:
    row = _artifact(session, user, kind, ref)
    stored, created, sites = signing.add_signature(session, kind, row, body)
    session.commit()
    for site_id in sites:
        st.watcher.notify(site_id)
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    key = session.get(KeyRow, stored.kid)
    assert key is not None
    return _signature(stored, key)


def _signatures(kind: ArtifactKind, ref: str, session: DB, user: User) -> list[ArtifactSignature]:
    row = _artifact(session, user, kind, ref)
    return [_signature(s, k) for s, k in signing.list_signatures(session, kind, _digest(row))]


_SIGNED = {201: {"model": ArtifactSignature, "description": "Stored"}}


@router.post("/images/{ref}/signatures", response_model=ArtifactSignature, responses=_SIGNED)
def sign_image(
    ref: str, body: SignatureCreate, response: Response, session: DB, user: User, st: State
) -> ArtifactSignature:
    """Store a signature of the image's digest by a key of its project (checked first:
    400 bad-signature otherwise). 201 when new, 200 when stored already."""
    return _sign(ArtifactKind.IMAGE, ref, body, response, session, user, st)


@router.get("/images/{ref}/signatures", response_model=list[ArtifactSignature])
def list_image_signatures(ref: str, session: DB, user: User) -> list[ArtifactSignature]:
    return _signatures(ArtifactKind.IMAGE, ref, session, user)


@router.post("/overlays/{ref}/signatures", response_model=ArtifactSignature, responses=_SIGNED)
def sign_overlay(
    ref: str, body: SignatureCreate, response: Response, session: DB, user: User, st: State
) -> ArtifactSignature:
    """Store a signature of the overlay's root digest by a key of its project (checked
    first: 400 bad-signature otherwise). 201 when new, 200 when stored already."""
    return _sign(ArtifactKind.OVERLAY, ref, body, response, session, user, st)


@router.get("/overlays/{ref}/signatures", response_model=list[ArtifactSignature])
def list_overlay_signatures(ref: str, session: DB, user: User) -> list[ArtifactSignature]:
    return _signatures(ArtifactKind.OVERLAY, ref, session, user)


# --- policy -----------------------------------------------------------------------------


def _policy_scope(user: User, name: str) -> None:
    if scope_project(user, name) != name:
        raise NotFoundError(f"project {name!r} not found")


@router.get("/projects/{name}/signing-policy", response_model=SigningPolicy)
def show_signing_policy(name: str, session: DB, user: User) -> SigningPolicy:
    """Whether the project's instances run only signed images and overlays."""
    _policy_scope(user, name)
    return SigningPolicy.model_validate(signing.get_policy(session, name))


@router.put("/projects/{name}/signing-policy", response_model=SigningPolicy)
def set_signing_policy(
    name: str, body: SigningPolicyUpdate, session: DB, user: User, st: State
) -> SigningPolicy:
    """Set the project's policy (admins); every site with its instances is told at once."""
    require_admin(user, "setting a project's signing policy")
    policy, sites = signing.set_policy(session, name, body.require_signatures)
    session.commit()
    for site_id in sites:
        st.watcher.notify(site_id)
    return SigningPolicy.model_validate(policy)
