"""Project quotas: limits on live instances, their vCPUs and memory, and the bytes of
overlays and images, checked when one is created.

Usage is counted from the rows themselves at each check (nothing to drift), under a
lock on the project's row taken before counting and held until the creation commits
(:func:`cloudlet.controller.db.dialect.lock_project`): concurrent creations in one
project, on any replica, are checked one after the other.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from cloudlet.controller.db.dialect import lock_project
from cloudlet.controller.db.models import App, AppVersion, Image, Instance, Overlay, ProjectQuota
from cloudlet.controller.db.models import Upload as UploadRow
from cloudlet.controller.services._util import utcnow
from cloudlet.errors import QuotaExceededError
from cloudlet.schemas import DesiredState
from cloudlet.schemas.artifacts import ArtifactKind
from cloudlet.schemas.quotas import QUOTAS, Quota, QuotaUpdate, QuotaValues

#: Sums of fractional vCPUs (0.1 + 0.2) carry rounding: a request that fits exactly fits.
_EPSILON = 1e-9


def get_limits(session: Session, project: str) -> ProjectQuota | None:
    """The project's limits, read afresh (None: no row, every quota unlimited)."""
    return session.get(ProjectQuota, project, populate_existing=True)


def set_limits(session: Session, project: str, body: QuotaUpdate) -> ProjectQuota:
    """Apply the fields ``body`` sets (null: unlimited); the rest keep their value."""
    lock_project(session, project)  # two first settings would both insert the row
    row = get_limits(session, project)
    if row is None:
        row = ProjectQuota(project=project, updated_at=utcnow())
        session.add(row)
    for name in body.model_fields_set & set(QUOTAS):
        setattr(row, name, getattr(body, name))
    row.updated_at = utcnow()
    session.flush()
    return row


def _live_resources(
    session: Session, project: str, app_id: str | None = None
) -> list[dict[str, Any]]:
    """The resources of the app version each live instance of the project (or of one
    of its apps) runs."""
    query = (
        select(AppVersion.resources, App.resources)
        .select_from(Instance)
        .join(App, App.id == Instance.app_id)
        .outerjoin(
            AppVersion,
            and_(AppVersion.app_id == Instance.app_id, AppVersion.version == Instance.app_version),
        )
        .where(Instance.project == project, Instance.desired_state != DesiredState.DELETED.value)
    )
    if app_id is not None:
        query = query.where(Instance.app_id == app_id)
    return [version_res or app_res for version_res, app_res in session.execute(query)]


def instance_usage(session: Session, project: str) -> dict[str, float]:
    """Live (not deleted) instances of the project, and the vCPUs and memory of the
    app version each runs: stopped and suspended ones too, which a start resumes
    without asking again."""
    rows = _live_resources(session, project)
    return {
        "instances": len(rows),
        "vcpus": sum(float(r.get("vcpus", 0)) for r in rows),
        "memory_mib": sum(float(r.get("memory_mib", 0)) for r in rows),
    }


def artifact_usage(session: Session, project: str, kind: ArtifactKind) -> int:
    """Bytes of the project's registered artifacts of ``kind`` plus those its uploads
    in progress will register (an upload reserves its declared size when it starts)."""
    model = Image if kind is ArtifactKind.IMAGE else Overlay
    stored = session.scalar(
        select(func.coalesce(func.sum(model.size), 0)).where(model.project == project)
    )
    pending = session.scalar(
        select(func.coalesce(func.sum(UploadRow.size), 0)).where(
            UploadRow.project == project, UploadRow.kind == kind.value
        )
    )
    return int(stored or 0) + int(pending or 0)


def _limited(row: ProjectQuota | None, names: Iterable[str]) -> bool:
    return row is not None and any(getattr(row, n) is not None for n in names)


def _refuse_over(
    project: str, row: ProjectQuota, used: dict[str, float], asked: dict[str, float]
) -> None:
    for name, want in asked.items():
        limit = getattr(row, name)
        if limit is not None and used[name] + want > limit + _EPSILON:
            raise QuotaExceededError(project, name, limit, _tidy(used[name]), want)


def check_instance(session: Session, project: str, resources: dict[str, Any]) -> None:
    """Make room for one more instance of an app with ``resources``: the project is
    locked (until the caller's transaction ends) before its instances are counted,
    so the caller must insert the instance in the same transaction.

    Raises:
        QuotaExceededError: instances, vcpus or memory_mib would pass its limit.
    """
    names = ("instances", "vcpus", "memory_mib")
    if not _limited(get_limits(session, project), names):
        return  # unlimited: no lock, no count
    lock_project(session, project)
    row = get_limits(session, project)  # again, under the lock: it may have changed
    if not _limited(row, names):
        return
    assert row is not None
    asked = {
        "instances": 1.0,
        "vcpus": float(resources.get("vcpus", 0)),
        "memory_mib": float(resources.get("memory_mib", 0)),
    }
    _refuse_over(project, row, instance_usage(session, project), asked)


def check_version(session: Session, project: str, app_id: str, resources: dict[str, Any]) -> None:
    """Make room for a new version of an app asking for ``resources``, which its live
    instances will be rolled to: what asks more than the version each runs now is
    checked against vcpus and memory_mib; the project is locked as by
    :func:`check_instance`.

    Raises:
        QuotaExceededError: the instances on the new version would pass a limit.
    """
    names = ("vcpus", "memory_mib")
    if not _limited(get_limits(session, project), names):
        return
    lock_project(session, project)
    row = get_limits(session, project)
    if not _limited(row, names):
        return
    assert row is not None
    current = _live_resources(session, project, app_id)
    growth = {
        name: sum(float(resources.get(name, 0)) - float(r.get(name, 0)) for r in current)
        for name in names
    }
    asked = {name: _tidy(more) for name, more in growth.items() if more > _EPSILON}
    if asked:
        _refuse_over(project, row, instance_usage(session, project), asked)


def check_artifact(session: Session, project: str, kind: ArtifactKind, size: int) -> None:
    """Make room for ``size`` more bytes of ``kind`` (an upload about to start); locks
    the project like :func:`check_instance`.

    Raises:
        QuotaExceededError: overlay_bytes or image_bytes would pass its limit.
    """
    name = f"{kind.value}_bytes"
    if not _limited(get_limits(session, project), (name,)):
        return
    lock_project(session, project)
    row = get_limits(session, project)
    if not _limited(row, (name,)):
        return
    assert row is not None
    used = {name: float(artifact_usage(session, project, kind))}
    _refuse_over(project, row, used, {name: float(size)})


def quota_view(session: Session, project: str) -> Quota:
    """The project's limits beside its usage, and which usage passes its limit."""
    row = get_limits(session, project)
    usage: dict[str, Any] = instance_usage(session, project)
    usage["instances"] = int(usage["instances"])
    usage["vcpus"] = _tidy(usage["vcpus"])
    usage["memory_mib"] = int(usage["memory_mib"])
    usage["overlay_bytes"] = artifact_usage(session, project, ArtifactKind.OVERLAY)
    usage["image_bytes"] = artifact_usage(session, project, ArtifactKind.IMAGE)
    limits = {n: getattr(row, n) for n in QUOTAS} if row is not None else {}
    over = [n for n in QUOTAS if limits.get(n) is not None and usage[n] > limits[n] + _EPSILON]
    return Quota(
        project=project, limits=QuotaValues(**limits), usage=QuotaValues(**usage), over=over
    )


def _tidy(value: float) -> float:
    """A sum of fractional vCPUs without its rounding noise (0.30000000000000004)."""
    return round(value, 6)
