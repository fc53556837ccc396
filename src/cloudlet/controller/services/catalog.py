"""Apps in the catalog: create, read, delete."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError as DBIntegrityError
from sqlalchemy.orm import Session

from cloudlet.controller.db.models import App, AppVersion, Instance, Overlay
from cloudlet.controller.services import quotas
from cloudlet.controller.services._util import new_id, utcnow
from cloudlet.controller.services.instances import live_instance_count, purge_tombstones
from cloudlet.controller.services.projects import require_project
from cloudlet.controller.services.rollouts import refuse_if_rolling
from cloudlet.errors import ConflictError, InvalidInputError
from cloudlet.placement import parse_constraints
from cloudlet.schemas import AppCreate, Component, Resources
from cloudlet.schemas.rollouts import AppVersionCreate

MIB = 1024 * 1024


def get_app(session: Session, project: str, name: str) -> App | None:
    return session.scalar(select(App).where(App.project == project, App.name == name))


def list_apps(session: Session, project: str | None) -> list[App]:
    query = select(App).order_by(App.name)
    if project is not None:
        query = query.where(App.project == project)
    return list(session.scalars(query))


def create_app(session: Session, project: str, body: AppCreate) -> App:
    """Raises:
    NotFoundError: the project does not exist.
    InvalidInputError: a constraint does not parse, or a resumable overlay's RAM does
        not match the app's memory.
    ConflictError: the name is taken in the project.
    """
    require_project(session, project)
    try:
        parse_constraints(body.constraints)
    except ValueError as exc:
        raise InvalidInputError(str(exc)) from exc
    _check_resumable_memory(session, body.components, body.resources)
    app = App(
        id=new_id(),
        project=project,
        name=body.name,
        description=body.description,
        components=[c.model_dump(mode="json") for c in body.components],
        resources=body.resources.model_dump(),
        latency_bound_ms=body.latency_bound_ms,
        labels=dict(body.labels),
        constraints=list(body.constraints),
        created_at=utcnow(),
        relocatable=body.relocatable,
        failover_after_s=body.failover_after_s,
        checkpoint_interval_s=body.checkpoint_interval_s,
    )
    session.add(app)
    try:
        session.flush()
    except DBIntegrityError as exc:
        raise ConflictError(f"app {body.name!r} exists already in project {project!r}") from exc
    session.add(
        AppVersion(
            app_id=app.id,
            version=1,
            components=app.components,
            resources=app.resources,
            created_at=app.created_at,
        )
    )
    return app


def publish_version(session: Session, app: App, body: AppVersionCreate) -> App:
    """Make ``body`` the app's next version: new instances run it at once, existing
    ones move to it by the rollout the caller starts (ConflictError while one runs;
    QuotaExceededError when its live instances on it would pass the project's vcpus or
    memory_mib quota).
    """
    refuse_if_rolling(session, app)
    resources = body.resources or Resources.model_validate(app.resources)
    _check_resumable_memory(session, body.components, resources)
    quotas.check_version(session, app.project, app.id, resources.model_dump())
    # Past every version published so far: a failed rollout puts the app back at an
    # earlier one, and its own version number is not reused.
    latest = session.scalar(select(func.max(AppVersion.version)).where(AppVersion.app_id == app.id))
    app.version = max(latest or 0, app.version) + 1
    app.components = [c.model_dump(mode="json") for c in body.components]
    app.resources = resources.model_dump()
    session.add(
        AppVersion(
            app_id=app.id,
            version=app.version,
            components=app.components,
            resources=app.resources,
            created_at=utcnow(),
        )
    )
    try:
        session.flush()
    except DBIntegrityError as exc:
        raise ConflictError(f"another version of {app.name!r} was published meanwhile") from exc
    return app


def _check_resumable_memory(
    session: Session, components: list[Component], resources: Resources
) -> None:
    """A VM resumes only into the memory size it was suspended with. Overlays not
    uploaded yet are not checked here; the site checks again before it resumes."""
    want = resources.memory_mib * MIB
    for comp in components:
        overlay = session.get(Overlay, comp.overlay) if comp.overlay else None
        if overlay is not None and overlay.resumable and overlay.memory_size != want:
            raise InvalidInputError(
                f"component {comp.name!r}: overlay {overlay.name!r} resumes a VM with "
                f"{(overlay.memory_size or 0) / MIB:g} MiB of RAM; set the app's memory "
                f"(resources.memory_mib) to {(overlay.memory_size or 0) / MIB:g}"
            )


def delete_app(session: Session, app: App) -> None:
    """Raises ConflictError while instances of the app are live."""
    live = live_instance_count(session, app.id)
    if live:
        raise ConflictError(f"app {app.name!r} has {live} live instance(s); delete them first")
    purge_tombstones(session, Instance.app_id == app.id)
    session.delete(app)
