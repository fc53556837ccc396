"""/v1/apps: the catalog of applications."""

from __future__ import annotations

from fastapi import APIRouter, Query, Response, status

from cloudlet.controller.api.deps import DB, State, User, scope_project
from cloudlet.controller.services import catalog, rollouts
from cloudlet.errors import ForbiddenError, NotFoundError
from cloudlet.schemas import DEFAULT_PROJECT, App, AppCreate
from cloudlet.schemas.rollouts import AppVersionCreate, Rollout

router = APIRouter(prefix="/v1/apps", tags=["apps"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=App)
def create_app(body: AppCreate, session: DB, user: User) -> App:
    project = scope_project(user, body.project) or DEFAULT_PROJECT
    if body.project and body.project != project:
        raise ForbiddenError(f"you may not create apps in project {body.project!r}")
    return App.model_validate(catalog.create_app(session, project, body))


@router.get("", response_model=list[App])
def list_apps(session: DB, user: User, project: str | None = Query(None)) -> list[App]:
    return [App.model_validate(a) for a in catalog.list_apps(session, scope_project(user, project))]


def _load(session: DB, user: User, name: str, project: str | None) -> catalog.App:
    app = catalog.get_app(session, scope_project(user, project) or DEFAULT_PROJECT, name)
    if app is None:
        raise NotFoundError(f"app {name!r} not found")
    return app


@router.get("/{name}", response_model=App)
def show_app(name: str, session: DB, user: User, project: str | None = Query(None)) -> App:
    return App.model_validate(_load(session, user, name, project))


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
def delete_app(name: str, session: DB, user: User, project: str | None = Query(None)) -> Response:
    catalog.delete_app(session, _load(session, user, name, project))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{name}/versions", status_code=status.HTTP_201_CREATED, response_model=Rollout)
def publish_version(
    name: str,
    body: AppVersionCreate,
    session: DB,
    user: User,
    st: State,
    project: str | None = Query(None),
) -> Rollout:
    """Publish the app's next version and roll its instances to it in waves (see
    `rollout`): the answer is the rollout, which GET /v1/rollouts/{id} follows."""
    app = _load(session, user, name, project)
    previous = app.version
    catalog.publish_version(session, app, body)
    rollout = rollouts.start_app_rollout(
        session, app, previous, body.rollout, st.settings.offline_grace_s
    )
    return rollouts.rollout_view(session, rollout)
