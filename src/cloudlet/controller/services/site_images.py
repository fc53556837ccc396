"""Pre-staging: the base images a site should hold, and what its agent reports holding.

The list of images is part of a site's desired state: changing it bumps the
site's revision so that its agent's long poll wakes. The agent's cache report
is stored as it came, the whole list at once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from cloudlet.controller.db.models import Image, Overlay, Site, SiteCache, SiteImage
from cloudlet.controller.services._util import utcnow
from cloudlet.controller.services.instances import bump_revision
from cloudlet.errors import ConflictError
from cloudlet.schemas import SiteState
from cloudlet.schemas.artifacts import ArtifactKind, CachedImage


def site_image_digests(session: Session, site_id: str) -> list[str]:
    """Digests of the base images the site should hold, sorted: for DesiredStateDoc.images."""
    return list(
        session.scalars(
            select(SiteImage.digest).where(SiteImage.site_id == site_id).order_by(SiteImage.digest)
        )
    )


def record_cache(session: Session, site: Site, cache: list[CachedImage]) -> None:
    """Store the cache contents an agent reported (AgentReport.cache), replacing the last."""
    entries = [c.model_dump(mode="json") for c in cache]
    row = session.get(SiteCache, site.id)
    if row is None:
        session.add(SiteCache(site_id=site.id, entries=entries, reported_at=utcnow()))
    else:
        row.entries = entries
        row.reported_at = utcnow()


def prestage(session: Session, site: Site, image: Image) -> bool:
    """Add an image to the site's desired list; True if that changed (revision bumped).

    Raises:
        ConflictError: the site is being or was decommissioned.
    """
    if site.state in (SiteState.DRAINING, SiteState.DECOMMISSIONED):
        raise ConflictError(f"site {site.name!r} is {site.state}")
    if session.get(SiteImage, (site.id, image.digest)) is not None:
        return False
    session.add(SiteImage(site_id=site.id, digest=image.digest, requested_at=utcnow()))
    session.flush()
    bump_revision(session, site.id)
    return True


def unstage(session: Session, site: Site, digest: str) -> bool:
    """Drop an image from the site's desired list; True if it was there (revision bumped)."""
    result = session.execute(
        delete(SiteImage).where(SiteImage.site_id == site.id, SiteImage.digest == digest)
    )
    if not result.rowcount:
        return False
    bump_revision(session, site.id)
    return True


def site_images_view(
    session: Session, site: Site, project: str | None = None
) -> list[dict[str, Any]]:
    """What the site should hold merged with what its agent last reported, by digest.

    Each entry: digest, kind, name, size, staged (on the desired list), requested_at,
    cached (in the last report), complete, fetched, last_used, reported_at. With a
    ``project``, only that project's images and overlays are listed.
    """
    cache_row = session.get(SiteCache, site.id)
    reported_at: datetime | None = cache_row.reported_at if cache_row else None
    cached = {e["digest"]: e for e in (cache_row.entries if cache_row else [])}
    staged = {
        s.digest: s.requested_at
        for s in session.scalars(select(SiteImage).where(SiteImage.site_id == site.id))
    }
    digests = sorted(set(staged) | set(cached))
    images = {i.digest: i for i in session.scalars(select(Image).where(Image.digest.in_(digests)))}
    overlays = {o.id: o for o in session.scalars(select(Overlay).where(Overlay.id.in_(digests)))}
    view = []
    for digest in digests:
        entry = cached.get(digest)
        known = images.get(digest) or overlays.get(digest)
        if project is not None and (known is None or known.project != project):
            continue
        kind = ArtifactKind.OVERLAY if digest in overlays else ArtifactKind.IMAGE
        view.append(
            {
                "digest": digest,
                "kind": entry["kind"] if entry else kind.value,
                "name": known.name if known else None,
                "size": known.size if known else entry["size"] if entry else 0,
                "staged": digest in staged,
                "requested_at": staged.get(digest),
                "cached": entry is not None,
                "complete": bool(entry and entry["complete"]),
                "fetched": (entry["size"] if entry["complete"] else entry["fetched"])
                if entry
                else 0,
                "last_used": entry.get("last_used") if entry else None,
                "reported_at": reported_at,
            }
        )
    return view
