"""/v1/instances: run apps at sites."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Query, Request, Response, status
from sqlalchemy import select

from cloudlet.controller.api.checkpoints import drop_blobs
from cloudlet.controller.api.deps import DB, State, User, load_instance, load_site, scope_project
from cloudlet.controller.api.paging import MAX_LIMIT, PAGED, Cursor, limit_query, set_next
from cloudlet.controller.db.models import App
from cloudlet.controller.db.models import Instance as InstanceRow
from cloudlet.controller.services import _paging as paging
from cloudlet.controller.services import checkpoints, fleet, instances
from cloudlet.schemas import DEFAULT_PROJECT, Instance, InstanceAction, InstanceCreate
from cloudlet.schemas._base import Model

router = APIRouter(prefix="/v1/instances", tags=["instances"])


class InstanceCreated(Instance):
    placement: dict[str, object] | None = None


class _Names(Model):
    apps: dict[str, str]
    sites: dict[str, str]


def _names(session: DB, rows: list[InstanceRow]) -> _Names:
    """App and site names for just these instances (not the whole fleet's)."""
    app_ids = {r.app_id for r in rows}
    site_ids = {r.site_id for r in rows}
    apps = session.execute(select(App.id, App.name).where(App.id.in_(app_ids)))
    return _Names(apps=dict(apps.all()), sites=fleet.site_names(session, site_ids))


def _view(row: InstanceRow, names: _Names, cls: type[Instance] = Instance, **extra: object):
    return cls(
        id=row.id,
        name=row.name,
        app=names.apps.get(row.app_id, row.app_id),
        project=row.project,
        site=names.sites.get(row.site_id, row.site_id),
        origin=row.origin,
        desired_state=row.desired_state,
        actual_state=row.actual_state,
        endpoint=row.endpoint,
        reason=row.reason,
        timings=row.timings,
        restarts=row.restarts,
        crash_restarts=row.crash_restarts or 0,
        usage_since=row.usage_since,
        created_at=row.created_at,
        updated_at=row.updated_at,
        epoch=row.epoch,
        app_version=row.app_version,
        client_latitude=row.client_latitude,
        client_longitude=row.client_longitude,
        placement=row.placement,
        **extra,
    )


@router.post("", status_code=status.HTTP_201_CREATED, response_model=InstanceCreated)
def create_instance(body: InstanceCreate, session: DB, user: User, st: State) -> InstanceCreated:
    project = scope_project(user) or DEFAULT_PROJECT
    row, explanation = instances.create_instance(
        session, project, body, st.settings.offline_grace_s
    )
    session.commit()
    st.watcher.notify(row.site_id)
    del explanation  # stored on the row: every view of the instance carries it
    return _view(row, _names(session, [row]), InstanceCreated)


@router.get("", response_model=list[Instance], responses=PAGED)
def list_instances(
    request: Request,
    response: Response,
    session: DB,
    user: User,
    site: str | None = Query(None, description="Only this site's instances."),
    project: str | None = Query(None, description="Only this project's (admins)."),
    limit: int = limit_query(MAX_LIMIT, MAX_LIMIT),
    cursor: Cursor = None,
) -> list[Instance]:
    """Instances oldest first, a page at a time."""
    after = paging.decode("instances", cursor, _KEY) if cursor is not None else None
    site_id = load_site(session, site).id if site is not None else None
    rows = instances.list_instances(
        session, scope_project(user, project), site_id, after=after, limit=limit + 1
    )
    rows, last = paging.split_page(rows, limit)
    if last is not None:
        key = [last.created_at, last.name, last.id]
        set_next(request, response, paging.encode("instances", key))
    names = _names(session, rows)
    return [_view(r, names) for r in rows]


#: The types of an instance list's key: (created_at, name, id).
_KEY = (datetime, str, str)


@router.get("/{ref}", response_model=Instance)
def show_instance(ref: str, session: DB, user: User) -> Instance:
    row = load_instance(session, user, ref)
    return _view(row, _names(session, [row]))


_ACTION_DOCS = {
    InstanceAction.STOP: "Stop the instance at its site (no usage while stopped).",
    InstanceAction.START: "Start a stopped or suspended instance again.",
    InstanceAction.SUSPEND: "Suspend a VM instance, keeping its RAM and device state at "
    "the site (409 for an instance with a process component).",
    InstanceAction.RESUME: "Resume a suspended instance where it left off.",
    InstanceAction.RESTART: "Restart the instance's workloads.",
}


def _action_route(action: InstanceAction) -> None:
    # One route per action, not /{ref}/{action}: that pattern would also catch
    # the other /{ref}/... routes (move, client) and answer them 422.
    def act_on_instance(ref: str, session: DB, user: User, st: State) -> Instance:
        row = instances.act(session, load_instance(session, user, ref), action)
        session.commit()
        st.watcher.notify(row.site_id)
        return _view(row, _names(session, [row]))

    router.add_api_route(
        f"/{{ref}}/{action.value}",
        act_on_instance,
        methods=["POST"],
        status_code=status.HTTP_202_ACCEPTED,
        response_model=Instance,
        name=f"{action.value}_instance",
        description=_ACTION_DOCS[action],
    )


for _action in InstanceAction:
    _action_route(_action)


@router.delete("/{ref}", status_code=status.HTTP_202_ACCEPTED, response_model=Instance)
def delete_instance(ref: str, session: DB, user: User, st: State) -> Instance:
    row = instances.delete_instance(session, load_instance(session, user, ref))
    gone = checkpoints.forget_instance(session, row.id)  # nothing fails it over now
    session.commit()
    drop_blobs(st, gone)
    st.watcher.notify(row.site_id)
    return _view(row, _names(session, [row]))
