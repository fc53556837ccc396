"""/v1/uploads, /v1/images, /v1/overlays and /v1/sites/{name}/images: artifacts.

Chunk uploads and blob downloads hold no database connection while bytes flow:
they authenticate and look rows up in short sessions of their own.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from cloudlet.controller.api._blob_response import OCTET, BlobResponse, blob_response
from cloudlet.controller.api.deps import (
    DB,
    State,
    User,
    load_site,
    refuse_reader_writes,
    require_admin,
    scope_project,
)
from cloudlet.controller.db.models import ApiToken
from cloudlet.controller.db.models import Image as ImageRow
from cloudlet.controller.db.models import Overlay as OverlayRow
from cloudlet.controller.db.models import Upload as UploadRow
from cloudlet.controller.services import artifacts, site_images
from cloudlet.controller.services._store import discard, write_chunk
from cloudlet.controller.services.auth import authenticate_site, authenticate_user
from cloudlet.controller.state import ControllerState
from cloudlet.errors import (
    AuthError,
    BlobStoreError,
    ConflictError,
    ForbiddenError,
    IntegrityError,
    InvalidInputError,
    NotFoundError,
    TokenExpiredError,
)
from cloudlet.schemas import DEFAULT_PROJECT
from cloudlet.schemas._base import Model
from cloudlet.schemas.artifacts import (
    ArtifactKind,
    Image,
    Overlay,
    PrestageRequest,
    Upload,
    UploadCreate,
)
from cloudlet.schemas.common import bearer_secret

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["artifacts"])


class SiteImage(Model):
    """An artifact a site should hold or holds: desired list merged with its cache report."""

    digest: str
    kind: ArtifactKind
    name: str | None
    size: int
    staged: bool
    requested_at: datetime | None
    cached: bool
    complete: bool
    fetched: int
    last_used: datetime | None
    reported_at: datetime | None


@dataclass(frozen=True)
class Reader:
    """Who reads a blob: a project scope (None: every project) from a token or a site."""

    project: str | None
    site_id: str | None = None


def brief_user(request: Request) -> ApiToken:
    """The API token, looked up in a session closed at once (for streaming handlers)."""
    with request.app.state.cloudlet.sessions() as session:
        user = authenticate_user(session, bearer_secret(request.headers.get("authorization")))
        session.expunge(user)
    return refuse_reader_writes(request, user)


def blob_reader(request: Request) -> Reader:
    """An admin or API token, or else a site credential (agents fetch with theirs)."""
    token = bearer_secret(request.headers.get("authorization"))
    with request.app.state.cloudlet.sessions() as session:
        try:
            user = authenticate_user(session, token)
        except TokenExpiredError:
            raise  # a login token past its expiry: say so, not "unknown"
        except AuthError:
            if not token:
                raise
            try:
                site = authenticate_site(session, token)
            except AuthError:
                raise AuthError("invalid bearer token or site credential") from None
            return Reader(project=None, site_id=site.id)
        return Reader(project=scope_project(user))


BriefUser = Annotated[ApiToken, Depends(brief_user)]
BlobReader = Annotated[Reader, Depends(blob_reader)]


def _image(row: ImageRow) -> Image:
    return Image.model_validate(row)


def _overlay(row: OverlayRow) -> Overlay:
    return Overlay(
        id=row.id,
        name=row.name,
        project=row.project,
        base=row.base_digest,
        size=row.size,
        disk_size=row.disk_size,
        memory_size=row.memory_size,
        memory_base=row.memory_base_digest,
        resumable=row.resumable,
        created_at=row.created_at,
    )


def _admin(user: ApiToken) -> None:
    require_admin(user, "pre-staging images at sites")


# --- uploads ----------------------------------------------------------------------------


@router.post("/uploads", status_code=status.HTTP_201_CREATED, response_model=Upload)
def create_upload(body: UploadCreate, session: DB, user: User, st: State) -> Upload:
    project = scope_project(user, body.project) or DEFAULT_PROJECT
    if body.project and body.project != project:
        raise ForbiddenError(f"you may not upload to project {body.project!r}")
    upload = artifacts.create_upload(session, st.artifacts, project, body)
    session.commit()  # before answering: the next request (the first chunk) must see it
    return Upload.model_validate(upload)


@router.get("/uploads", response_model=list[Upload])
def list_uploads(session: DB, user: User) -> list[Upload]:
    return [Upload.model_validate(u) for u in artifacts.list_uploads(session, scope_project(user))]


def _load_upload(session: DB, user: ApiToken, upload_id: str, lock: bool = False) -> UploadRow:
    upload = artifacts.get_upload(session, scope_project(user), upload_id, lock)
    if upload is None:
        raise NotFoundError(f"upload {upload_id!r} not found (completed, aborted or expired)")
    return upload


@router.get("/uploads/{upload_id}", response_model=Upload)
def show_upload(upload_id: str, session: DB, user: User) -> Upload:
    return Upload.model_validate(_load_upload(session, user, upload_id))


def _upload_brief(st: ControllerState, user: ApiToken, upload_id: str) -> UploadRow:
    with st.sessions() as session:
        upload = _load_upload(session, user, upload_id)
        session.expunge(upload)
    return upload


def _record_brief(
    st: ControllerState, upload: UploadRow, offset: int, written: int, path: Path
) -> UploadRow:
    with st.sessions.begin() as session:
        row = artifacts.get_upload(session, None, upload.id)
        if row is None:  # aborted or completed while this chunk was arriving
            discard(path)
            raise NotFoundError(f"upload {upload.id!r} was completed or aborted meanwhile")
        artifacts.record_chunk(session, row, offset, written)
        session.flush()
        session.expunge(row)
    return row


async def body_chunks(request: Request) -> AsyncIterator[bytes]:
    """The request body; a client that goes away mid-body just ends it early."""
    try:
        async for piece in request.stream():
            yield piece
    except ClientDisconnect:
        return


@router.put(
    "/uploads/{upload_id}",
    response_model=Upload,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {OCTET: {"schema": {"type": "string", "format": "binary", "minLength": 1}}},
        }
    },
)
async def put_chunk(
    upload_id: str,
    request: Request,
    user: BriefUser,
    st: State,
    offset: int = Query(..., ge=0, description="Where this chunk starts: the upload's received."),
) -> Upload:
    """Store a chunk (raw bytes) at `offset`; resume from the answer's `received`."""
    upload = await run_in_threadpool(_upload_brief, st, user, upload_id)
    if offset > upload.received:
        raise ConflictError(artifacts.gap_message(upload))
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and offset + int(length) > upload.size:
        raise ConflictError(
            f"{offset} + {length} bytes runs past the upload's declared size {upload.size}"
        )
    artifacts.require_bytes_here(st.artifacts, upload, offset)
    path = st.artifacts.upload_path(upload.id)
    result = await write_chunk(path, offset, upload.size, body_chunks(request))
    if result.overflow:
        raise ConflictError(f"the body runs past the upload's declared size {upload.size}")
    if result.written == 0:
        raise InvalidInputError(f"the chunk is empty; send the upload's bytes from {offset}")
    row = await run_in_threadpool(_record_brief, st, upload, offset, result.written, path)
    return Upload.model_validate(row)


@router.post(
    "/uploads/{upload_id}/complete",
    response_model=Image | Overlay,
    responses={201: {"model": Image | Overlay, "description": "Registered"}},
)
def complete_upload(
    upload_id: str, response: Response, session: DB, user: User, st: State
) -> Image | Overlay:
    """Check the bytes and register the image or overlay: 201 when new, 200 when it
    existed already (idempotent)."""
    upload = _load_upload(session, user, upload_id, lock=True)
    try:
        row, created = artifacts.complete_upload(
            session, st.artifacts, upload, admin=user.role == "admin"
        )
    except (IntegrityError, InvalidInputError):
        session.commit()  # the bad upload stays discarded although the request fails
        raise
    session.commit()
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    return _image(row) if isinstance(row, ImageRow) else _overlay(row)


@router.delete("/uploads/{upload_id}", status_code=status.HTTP_204_NO_CONTENT)
def abort_upload(upload_id: str, session: DB, user: User, st: State) -> Response:
    artifacts.delete_upload(session, st.artifacts, _load_upload(session, user, upload_id))
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# --- images and overlays ------------------------------------------------------------------


@router.get("/images", response_model=list[Image])
def list_images(session: DB, user: User, project: str | None = Query(None)) -> list[Image]:
    return [_image(i) for i in artifacts.list_images(session, scope_project(user, project))]


def _load_image(session: DB, project: str | None, ref: str) -> ImageRow:
    image = artifacts.get_image(session, project, ref)
    if image is None:
        raise NotFoundError(f"image {ref!r} not found")
    return image


@router.get("/images/{ref}", response_model=Image)
def show_image(ref: str, session: DB, user: User, project: str | None = Query(None)) -> Image:
    """By digest, name or unique digest prefix."""
    return _image(_load_image(session, scope_project(user, project), ref))


@router.delete("/images/{ref}", status_code=status.HTTP_204_NO_CONTENT)
def delete_image(ref: str, session: DB, user: User, st: State) -> Response:
    """Refused (409) while overlays or apps refer to the image; sites drop it."""
    image = _load_image(session, scope_project(user), ref)
    key, sites = artifacts.delete_image(session, st.artifacts, image)
    session.commit()
    _drop_blob(st, key)
    for site_id in sites:
        st.watcher.notify(site_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/overlays", response_model=list[Overlay])
def list_overlays(session: DB, user: User, project: str | None = Query(None)) -> list[Overlay]:
    return [_overlay(o) for o in artifacts.list_overlays(session, scope_project(user, project))]


@router.get("/overlays/{ref}", response_model=Overlay)
def show_overlay(ref: str, session: DB, user: User, project: str | None = Query(None)) -> Overlay:
    """By id (root digest), name or unique id prefix."""
    overlay = artifacts.get_overlay(session, scope_project(user, project), ref)
    if overlay is None:
        raise NotFoundError(f"overlay {ref!r} not found")
    return _overlay(overlay)


@router.delete("/overlays/{ref}", status_code=status.HTTP_204_NO_CONTENT)
def delete_overlay(ref: str, session: DB, user: User, st: State) -> Response:
    """Refused (409) while apps refer to the overlay."""
    overlay = artifacts.get_overlay(session, scope_project(user), ref)
    if overlay is None:
        raise NotFoundError(f"overlay {ref!r} not found")
    key = artifacts.delete_overlay(session, st.artifacts, overlay)
    session.commit()
    _drop_blob(st, key)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _drop_blob(st: ControllerState, key: str) -> None:
    # After the commit: a blob the store failed to delete is only an orphan (the
    # same bytes uploaded again reuse it), not a reason to fail a done deletion.
    try:
        st.artifacts.blobs.delete(key)
    except BlobStoreError as exc:
        log.warning("artifact deleted, its blob kept: %s", exc)


@router.get("/images/{ref}/blob", response_class=BlobResponse)
@router.head("/images/{ref}/blob", response_class=BlobResponse, include_in_schema=False)
def image_blob(ref: str, request: Request, reader: BlobReader, st: State) -> Response:
    """The image's bytes; HTTP Range supported. A site credential may read it too."""
    with st.sessions() as session:
        image = _load_image(session, reader.project, ref)
        digest, size, project = image.digest, image.size, image.project
    key = st.artifacts.image_key(digest)
    sent = _fetch_counter(st, reader, project, "image", digest)
    return blob_response(request, st.artifacts.blobs, key, size, digest, sent)


@router.get("/overlays/{ref}/blob", response_class=BlobResponse)
@router.head("/overlays/{ref}/blob", response_class=BlobResponse, include_in_schema=False)
def overlay_blob(ref: str, request: Request, reader: BlobReader, st: State) -> Response:
    """The overlay's bytes; HTTP Range supported. A site credential may read it too."""
    with st.sessions() as session:
        overlay = artifacts.get_overlay(session, reader.project, ref)
        if overlay is None:
            raise NotFoundError(f"overlay {ref!r} not found")
        overlay_id, size, project = overlay.id, overlay.size, overlay.project
    key = st.artifacts.overlay_key(overlay_id)
    sent = _fetch_counter(st, reader, project, "overlay", overlay_id)
    return blob_response(request, st.artifacts.blobs, key, size, overlay_id, sent)


def _fetch_counter(
    st: ControllerState, reader: Reader, project: str, kind: str, artifact: str
) -> Callable[[int], None] | None:
    """Bytes sent to a site are metered to the artifact's project; people's downloads
    are not (a site fetching is what the provider bills)."""
    if reader.site_id is None:
        return None
    return st.fetches.counter((project, reader.site_id, kind, artifact))


# --- pre-staging at sites ------------------------------------------------------------------


@router.get("/sites/{name}/images", response_model=list[SiteImage])
def list_site_images(name: str, session: DB, user: User) -> list[SiteImage]:
    """What the site should hold, merged with what its agent last reported holding."""
    view = site_images.site_images_view(session, load_site(session, name), scope_project(user))
    return [SiteImage.model_validate(entry) for entry in view]


@router.post("/sites/{name}/images", status_code=status.HTTP_202_ACCEPTED, response_model=SiteImage)
def prestage_image(
    name: str, body: PrestageRequest, session: DB, user: User, st: State
) -> SiteImage:
    """Add an image to the site's desired list; its agent fetches it in the background."""
    _admin(user)
    site = load_site(session, name)
    image = _load_image(session, scope_project(user), body.image)
    if site_images.prestage(session, site, image):
        session.commit()
        st.watcher.notify(site.id)
    view = site_images.site_images_view(session, site)
    return SiteImage.model_validate(next(e for e in view if e["digest"] == image.digest))


@router.delete("/sites/{name}/images/{ref}", status_code=status.HTTP_204_NO_CONTENT)
def unstage_image(name: str, ref: str, session: DB, user: User, st: State) -> Response:
    """Drop an image from the site's desired list (its agent may evict it)."""
    _admin(user)
    site = load_site(session, name)
    image = artifacts.get_image(session, scope_project(user), ref)
    if not site_images.unstage(session, site, image.digest if image else ref):
        raise NotFoundError(f"image {ref!r} is not staged at site {name!r}")
    session.commit()
    st.watcher.notify(site.id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
