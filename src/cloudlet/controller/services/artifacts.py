"""Images and overlays in the catalog: resumable uploads, registration, reads, deletes.

An image's id is its digest (see ``_store.image_digest``); an overlay's id is its
manifest's root digest, and it may only be registered on a registered base.
Bytes live in an :class:`ArtifactStore`; rows and blobs agree: a failed or
wrong-digest upload leaves neither. Pre-staging and site caches: ``site_images``.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError as DBIntegrityError
from sqlalchemy.orm import InstrumentedAttribute, Session

from cloudlet import synthesis
from cloudlet.controller.db.models import App, AppVersion, Image, Overlay, SiteImage, Upload
from cloudlet.controller.services import _store, quotas
from cloudlet.controller.services._store import ArtifactStore
from cloudlet.controller.services._util import new_id, utcnow
from cloudlet.controller.services.instances import bump_revision
from cloudlet.controller.services.projects import require_project
from cloudlet.errors import (
    ConflictError,
    IntegrityError,
    InvalidInputError,
    NotFoundError,
    OverlayFormatError,
)
from cloudlet.schemas import DEFAULT_PROJECT
from cloudlet.schemas.artifacts import ArtifactKind, UploadCreate

__all__ = [
    "ArtifactStore",
    "complete_upload",
    "create_upload",
    "delete_image",
    "delete_overlay",
    "delete_upload",
    "get_image",
    "get_overlay",
    "get_upload",
    "list_images",
    "list_overlays",
    "list_uploads",
    "record_chunk",
    "require_bytes_here",
]

_Row = TypeVar("_Row", Image, Overlay)
_HEX = re.compile(r"^[0-9a-f]+$")
#: Shortest digest prefix accepted in place of a whole digest.
MIN_PREFIX = 12
#: Uploads untouched for this long are purged when a new one starts.
STALE_UPLOAD = timedelta(days=7)


# --- uploads -------------------------------------------------------------------------


def get_upload(
    session: Session, project: str | None, upload_id: str, lock: bool = False
) -> Upload | None:
    """The upload, if it is in `project` (None: any). `lock` holds its row until the
    transaction ends (PostgreSQL), so that two completions of it do not overlap."""
    upload = session.get(Upload, upload_id, with_for_update=lock)
    if upload is None or (project is not None and upload.project != project):
        return None
    return upload


def list_uploads(session: Session, project: str | None) -> list[Upload]:
    query = select(Upload).order_by(Upload.created_at)
    if project is not None:
        query = query.where(Upload.project == project)
    return list(session.scalars(query))


def create_upload(
    session: Session, store: ArtifactStore, project: str, body: UploadCreate
) -> Upload:
    """Start an upload: a row and an empty local file.

    Raises:
        NotFoundError: the project does not exist.
        ConflictError: the name is taken by a different artifact of that kind.
        ConflictError: the controller lacks the disk space for it.
        QuotaExceededError: the project's overlay_bytes or image_bytes quota has no room
            for its size (which the upload reserves until it completes or is aborted).
    """
    require_project(session, project)
    _purge_stale_uploads(session, store)
    model = Image if body.kind is ArtifactKind.IMAGE else Overlay
    taken = session.scalar(select(model).where(model.project == project, model.name == body.name))
    if taken is not None and (body.digest is None or body.digest != _artifact_id(taken)):
        raise ConflictError(
            f"{body.kind} {body.name!r} exists already in project {project!r} "
            f"({_artifact_id(taken)[:16]}); choose another name"
        )
    if taken is None:  # the same artifact again registers nothing new
        quotas.check_artifact(session, project, body.kind, body.size)
    free = store.free_bytes()
    if body.size > free:
        raise ConflictError(
            f"the controller has {free} bytes free, not enough for {body.size} bytes"
        )
    now = utcnow()
    upload = Upload(
        id=new_id(),
        project=project,
        kind=body.kind.value,
        name=body.name,
        size=body.size,
        digest=body.digest.lower() if body.digest else None,
        received=0,
        created_at=now,
        updated_at=now,
    )
    session.add(upload)
    session.flush()  # the row first: a refused one leaves no file behind
    store.create_upload_file(upload.id)
    return upload


def _purge_stale_uploads(session: Session, store: ArtifactStore) -> None:
    stale = session.scalars(select(Upload).where(Upload.updated_at < utcnow() - STALE_UPLOAD))
    for upload in list(stale):
        delete_upload(session, store, upload)


def record_chunk(session: Session, upload: Upload, offset: int, written: int) -> Upload:
    """Count the bytes a PUT stored at `offset`: ``received`` only grows, and only from
    a chunk that starts at or before it (a re-sent range is accepted as it is).

    Raises:
        ConflictError: `offset` is past what was received (a gap): resume from ``received``.
    """
    end = offset + written
    result = session.execute(
        update(Upload)
        .where(Upload.id == upload.id, Upload.received >= offset, Upload.received < end)
        .values(received=end, updated_at=utcnow())
    )
    session.refresh(upload)
    if result.rowcount == 0 and upload.received < offset:
        raise ConflictError(gap_message(upload))
    return upload


def gap_message(upload: Upload) -> str:
    return (
        f"upload {upload.id} has received {upload.received} bytes; "
        f"resume with offset={upload.received}"
    )


def require_bytes_here(store: ArtifactStore, upload: Upload, needed: int) -> None:
    """Refuse an upload whose bytes this replica does not hold (uploads are assembled
    on local disk: another replica, without a shared uploads dir, would write a
    file with a hole, or complete a file it does not have).

    Raises:
        ConflictError: fewer than `needed` bytes of it are here.
    """
    held = store.held_bytes(upload.id)
    if held is None or held < needed:
        raise ConflictError(
            f"upload {upload.id} is being received by another controller replica: send "
            "all of an upload's requests to one replica, or give the replicas a shared "
            "blobs.uploads_dir"
        )


def delete_upload(session: Session, store: ArtifactStore, upload: Upload) -> None:
    session.delete(upload)
    session.flush()
    _store.discard(store.upload_path(upload.id))


def complete_upload(
    session: Session, store: ArtifactStore, upload: Upload, admin: bool = True
) -> tuple[Image | Overlay, bool]:
    """Check a fully received upload and register what it holds.

    Returns the image or overlay and whether it is new (False: it existed already).
    A bad upload is deleted (row and file) before the error is raised, so the
    caller must commit even then; a missing base keeps the upload for a retry.

    Raises:
        ConflictError: bytes are missing (or on another replica), or the artifact
            belongs to another project.
        IntegrityError: the digest differs from the expected one, or a segment is corrupt.
        InvalidInputError: not a valid overlay (the synthesis library's message).
        NotFoundError: the overlay's base image is not registered.
    """
    if upload.received < upload.size:
        raise ConflictError(
            f"upload {upload.id} is incomplete: {upload.received} of {upload.size} bytes"
        )
    require_bytes_here(store, upload, upload.size)
    path = store.upload_path(upload.id)
    try:
        if upload.kind == ArtifactKind.IMAGE:
            row, created = _complete_image(session, store, upload, path)
        else:
            row, created = _complete_overlay(session, store, upload, path)
    except (IntegrityError, InvalidInputError):
        delete_upload(session, store, upload)
        raise
    if row.project != upload.project and not admin:
        raise ConflictError(f"this {upload.kind} is registered in another project")
    delete_upload(session, store, upload)
    return row, created


def _check_expected(upload: Upload, actual: str) -> None:
    if upload.digest is not None and upload.digest != actual:
        raise IntegrityError(
            f"digest mismatch: expected {upload.digest}, received bytes hash to {actual}; "
            "the upload was discarded"
        )


def _complete_image(
    session: Session, store: ArtifactStore, upload: Upload, path: Path
) -> tuple[Image, bool]:
    digest = _store.image_digest(path)
    _check_expected(upload, digest)
    existing = session.get(Image, digest)
    if existing is not None:
        return existing, False
    _check_name_free(session, Image, upload)
    image = Image(
        digest=digest,
        project=upload.project,
        name=upload.name,
        size=upload.size,
        created_at=utcnow(),
    )
    store.publish(path, store.image_key(digest))
    session.add(image)
    _flush_named(session, upload)
    return image, True


def _complete_overlay(
    session: Session, store: ArtifactStore, upload: Upload, path: Path
) -> tuple[Overlay, bool]:
    try:
        manifest = synthesis.read_manifest(path)
    except OverlayFormatError as exc:
        raise InvalidInputError(f"not a valid overlay: {exc}") from exc
    base = manifest.base_digest.hex()
    if session.get(Image, base) is None:
        raise NotFoundError(
            f"the overlay's base image {base} is not registered: upload the base first, "
            f"then complete upload {upload.id} again"
        )
    if manifest.memory_base_digest is not None:
        memory_base = manifest.memory_base_digest.hex()
        if session.get(Image, memory_base) is None:
            raise NotFoundError(
                f"the overlay's memory base {memory_base} (the base VM's RAM) is not "
                f"registered: upload it as an image, then complete upload {upload.id} again"
            )
    try:
        info = synthesis.verify_overlay(path)
    except OverlayFormatError as exc:
        raise InvalidInputError(f"not a valid overlay: {exc}") from exc
    overlay_id = info["root_digest"]
    _check_expected(upload, overlay_id)
    existing = session.get(Overlay, overlay_id)
    if existing is not None:
        return existing, False
    _check_name_free(session, Overlay, upload)
    overlay = Overlay(
        id=overlay_id,
        project=upload.project,
        name=upload.name,
        base_digest=base,
        size=upload.size,
        disk_size=info["disk_size"],
        memory_size=info["memory_size"],
        memory_base_digest=info["memory_base_digest"],
        resumable=info["resumable"],
        created_at=utcnow(),
    )
    store.publish(path, store.overlay_key(overlay_id))
    session.add(overlay)
    _flush_named(session, upload)
    return overlay, True


def _check_name_free(session: Session, model: type[_Row], upload: Upload) -> None:
    taken = session.scalar(
        select(model).where(model.project == upload.project, model.name == upload.name)
    )
    if taken is not None:
        raise ConflictError(
            f"{upload.kind} {upload.name!r} exists already in project {upload.project!r} "
            f"with another digest ({_artifact_id(taken)[:16]})"
        )


def _flush_named(session: Session, upload: Upload) -> None:
    # Only a concurrent upload under the same name gets here; the blob it left
    # behind is content-addressed, so a later upload of the same bytes reuses it.
    try:
        with session.begin_nested():
            session.flush()
    except DBIntegrityError as exc:
        raise ConflictError(
            f"{upload.kind} {upload.name!r} exists already in project {upload.project!r}"
        ) from exc


def _artifact_id(row: Image | Overlay) -> str:
    return row.digest if isinstance(row, Image) else row.id


# --- images and overlays ---------------------------------------------------------------


def list_images(session: Session, project: str | None) -> list[Image]:
    query = select(Image).order_by(Image.name)
    if project is not None:
        query = query.where(Image.project == project)
    return list(session.scalars(query))


def list_overlays(session: Session, project: str | None) -> list[Overlay]:
    query = select(Overlay).order_by(Overlay.name)
    if project is not None:
        query = query.where(Overlay.project == project)
    return list(session.scalars(query))


def get_image(session: Session, project: str | None, ref: str) -> Image | None:
    """By digest, by name in `project` (None: the default project, for an admin who
    may see every project's digests), or by a unique digest prefix."""
    return _get(session, Image, Image.digest, project, ref)


def get_overlay(session: Session, project: str | None, ref: str) -> Overlay | None:
    """By id (root digest), by name, or by a unique id prefix; see :func:`get_image`."""
    return _get(session, Overlay, Overlay.id, project, ref)


def _get(
    session: Session,
    model: type[_Row],
    key: InstrumentedAttribute[str],
    project: str | None,
    ref: str,
) -> _Row | None:
    scoped = [] if project is None else [model.project == project]
    ref = ref.strip()
    if len(ref) == 64 and _HEX.match(ref.lower()):
        return session.scalar(select(model).where(key == ref.lower(), *scoped))
    named = session.scalar(
        select(model).where(model.name == ref, model.project == (project or DEFAULT_PROJECT))
    )
    if named is not None or len(ref) < MIN_PREFIX or not _HEX.match(ref):
        return named
    found = list(session.scalars(select(model).where(key.startswith(ref), *scoped).limit(2)))
    return found[0] if len(found) == 1 else None


def delete_image(session: Session, store: ArtifactStore, image: Image) -> tuple[str, list[str]]:
    """Remove an image from the catalog and from every site's desired list.

    Returns its blob's key (to be deleted once the transaction commits) and the ids
    of the sites whose revision was bumped.

    Raises:
        ConflictError: overlays or apps still refer to it.
    """
    overlays = session.scalar(
        select(func.count())
        .select_from(Overlay)
        .where((Overlay.base_digest == image.digest) | (Overlay.memory_base_digest == image.digest))
    )
    if overlays:
        raise ConflictError(f"image {image.name!r} is the base of {overlays} overlay(s)")
    apps = _apps_using(session, "image", image.digest)
    if apps:
        raise ConflictError(f"image {image.name!r} is used by app(s) {', '.join(apps)}")
    sites = list(session.scalars(select(SiteImage.site_id).where(SiteImage.digest == image.digest)))
    session.execute(delete(SiteImage).where(SiteImage.digest == image.digest))
    for site_id in sites:
        bump_revision(session, site_id)
    session.delete(image)
    session.flush()
    return store.image_key(image.digest), sites


def _apps_using(session: Session, field: str, value: str) -> list[str]:
    """Apps any of whose published versions names ``value`` as a component's
    ``field``: an older version may still run, or be rolled back to."""
    rows = session.execute(select(App.name, AppVersion.components).join(AppVersion))
    return sorted({name for name, comps in rows if any(c.get(field) == value for c in comps)})


def delete_overlay(session: Session, store: ArtifactStore, overlay: Overlay) -> str:
    """Remove an overlay from the catalog; returns its blob's key, to delete after commit.

    Raises:
        ConflictError: apps still refer to it.
    """
    apps = _apps_using(session, "overlay", overlay.id)
    if apps:
        raise ConflictError(f"overlay {overlay.name!r} is used by app(s) {', '.join(apps)}")
    session.delete(overlay)
    session.flush()
    return store.overlay_key(overlay.id)
