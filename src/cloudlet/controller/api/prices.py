"""/v1/prices: the provider's price sheet (admins set it; tenants read what applies
to them). The default plan, a project's, an app's; the most specific one applies."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response, status

from cloudlet.controller.api.deps import DB, User, require_admin
from cloudlet.controller.db.models import ApiToken
from cloudlet.controller.services import catalog, prices
from cloudlet.controller.services.projects import require_project
from cloudlet.errors import NotFoundError
from cloudlet.schemas.metering import PricePlan, PricePlanSet

router = APIRouter(prefix="/v1/prices", tags=["prices"])

ProjectName = Annotated[str, Path(min_length=1, max_length=63, pattern=r"^[a-z0-9-]+$")]
AppName = Annotated[
    str, Path(min_length=1, max_length=63, pattern=r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
]
ANY = prices.ANY


def _setting(user: ApiToken) -> None:
    require_admin(user, "setting prices")


def _visible(user: ApiToken, project: str) -> None:
    """Tenants read the plans that may apply to them; another project's is not theirs."""
    if user.role != "admin" and project not in (ANY, user.project):
        raise NotFoundError(f"project {project!r} has no plan")


def _read(session: DB, user: ApiToken, project: str, app: str) -> PricePlan:
    _visible(user, project)
    row = prices.get_plan(session, project, app)
    if row is None:
        raise NotFoundError(f"no plan is set for {_scope(project, app)}")
    return prices.to_wire(row)


def _scope(project: str, app: str) -> str:
    if not project:
        return "the default"
    return f"app {app!r} of project {project!r}" if app else f"project {project!r}"


def _drop(session: DB, user: ApiToken, project: str, app: str) -> Response:
    _setting(user)
    if not prices.delete_plan(session, project, app):
        raise NotFoundError(f"no plan is set for {_scope(project, app)}")
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("", response_model=list[PricePlan])
def list_prices(session: DB, user: User) -> list[PricePlan]:
    """The whole sheet (admins), or the plans that may apply to the caller's project."""
    project = None if user.role == "admin" else user.project
    return [prices.to_wire(r) for r in prices.list_plans(session, project)]


@router.put("/default", response_model=PricePlan)
def set_default(body: PricePlanSet, session: DB, user: User) -> PricePlan:
    """The plan for every app no more specific plan names."""
    _setting(user)
    return prices.to_wire(prices.set_plan(session, ANY, ANY, body))


@router.get("/default", response_model=PricePlan)
def show_default(session: DB, user: User) -> PricePlan:
    return _read(session, user, ANY, ANY)


@router.delete("/default", status_code=status.HTTP_204_NO_CONTENT)
def delete_default(session: DB, user: User) -> Response:
    return _drop(session, user, ANY, ANY)


@router.put("/projects/{project}", response_model=PricePlan)
def set_project(project: ProjectName, body: PricePlanSet, session: DB, user: User) -> PricePlan:
    """The plan for the project's apps that have none of their own, and for the bytes
    of its images and overlays sent to sites."""
    _setting(user)
    require_project(session, project)
    return prices.to_wire(prices.set_plan(session, project, ANY, body))


@router.get("/projects/{project}", response_model=PricePlan)
def show_project(project: ProjectName, session: DB, user: User) -> PricePlan:
    return _read(session, user, project, ANY)


@router.delete("/projects/{project}", status_code=status.HTTP_204_NO_CONTENT)
def delete_project(project: ProjectName, session: DB, user: User) -> Response:
    return _drop(session, user, project, ANY)


@router.put("/projects/{project}/apps/{app}", response_model=PricePlan)
def set_app(
    project: ProjectName, app: AppName, body: PricePlanSet, session: DB, user: User
) -> PricePlan:
    """The plan for one app's instances."""
    _setting(user)
    require_project(session, project)
    if catalog.get_app(session, project, app) is None:
        raise NotFoundError(f"app {app!r} not found in project {project!r}")
    return prices.to_wire(prices.set_plan(session, project, app, body))


@router.get("/projects/{project}/apps/{app}", response_model=PricePlan)
def show_app(project: ProjectName, app: AppName, session: DB, user: User) -> PricePlan:
    return _read(session, user, project, app)


@router.delete("/projects/{project}/apps/{app}", status_code=status.HTTP_204_NO_CONTENT)
def delete_app(project: ProjectName, app: AppName, session: DB, user: User) -> Response:
    return _drop(session, user, project, app)
