"""Agent packages (wheels of this project) and the agent version each site should run."""

from __future__ import annotations

import zipfile
from pathlib import Path

from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from cloudlet.controller.db.models import AgentPackage, Site
from cloudlet.controller.services._store import ArtifactStore, image_digest
from cloudlet.controller.services._util import utcnow
from cloudlet.controller.services.instances import bump_revision
from cloudlet.errors import ConflictError, InvalidInputError, NotFoundError
from cloudlet.schemas.sync import AgentTarget

#: A wheel of the agent is a few MB; refuse anything far past that.
MAX_PACKAGE_BYTES = 256 * 1024 * 1024


def wheel_version(filename: str, path: Path) -> str:
    """The version of a wheel of this project, checked against its own metadata.

    Raises:
        InvalidInputError: not a wheel of cloudlet, or a name and metadata that disagree.
    """
    try:
        name, version, _, _ = parse_wheel_filename(filename)
    except InvalidWheelFilename as exc:
        raise InvalidInputError(f"not a wheel file name: {exc}") from None
    if name != canonicalize_name("cloudlet"):
        raise InvalidInputError(f"a wheel of {name!r}, not of cloudlet")
    if len(str(version)) > 64:
        raise InvalidInputError("a package's version is at most 64 characters")
    metadata = f"cloudlet-{version}.dist-info/METADATA"
    try:
        with zipfile.ZipFile(path) as wheel:
            text = wheel.read(metadata).decode()
    except (zipfile.BadZipFile, KeyError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"{filename} is not a readable wheel ({exc})") from None
    stated = next(
        (ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("Version:")), None
    )
    if stated != str(version):
        raise InvalidInputError(f"{filename} says version {stated!r} in its metadata")
    return str(version)


def add_package(session: Session, store: ArtifactStore, filename: str, path: Path) -> AgentPackage:
    """Register the wheel at ``path`` (moved into the store); ConflictError if that
    version exists with other bytes (a version names one build)."""
    version = wheel_version(filename, path)
    digest = image_digest(path)
    held = session.get(AgentPackage, version)
    if held is not None:
        if held.digest != digest:
            raise ConflictError(f"agent package {version} exists with other contents")
        path.unlink(missing_ok=True)
        return held
    size = path.stat().st_size
    store.publish(path, store.package_key(version))
    row = AgentPackage(
        version=version, digest=digest, size=size, filename=filename, created_at=utcnow()
    )
    session.add(row)
    return row


def list_packages(session: Session) -> list[AgentPackage]:
    return list(session.scalars(select(AgentPackage).order_by(AgentPackage.created_at)))


def get_package(session: Session, version: str) -> AgentPackage:
    row = session.get(AgentPackage, version)
    if row is None:
        raise NotFoundError(f"agent package {version!r} not found")
    return row


def set_agent_target(session: Session, site: Site, version: str | None) -> None:
    """Tell a site which agent version to run (None: whichever it runs)."""
    if site.agent_target == version:
        return
    session.execute(update(Site).where(Site.id == site.id).values(agent_target=version))
    bump_revision(session, site.id)


def agent_target(session: Session, site: Site) -> AgentTarget | None:
    """The desired state's agent entry: the version, and its package if one is held
    (a version without one is an install the site kept, the way back of a rollback)."""
    if site.agent_target is None:
        return None
    package = session.get(AgentPackage, site.agent_target)
    if package is None:
        return AgentTarget(version=site.agent_target)
    return AgentTarget(version=package.version, digest=package.digest, size=package.size)
