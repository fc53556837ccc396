"""/v1/rollouts: app rollouts and agent upgrades, wave by wave."""

from __future__ import annotations

from fastapi import APIRouter, Query

from cloudlet.controller.api.deps import DB, User, scope_project
from cloudlet.controller.services import catalog, rollouts
from cloudlet.errors import NotFoundError
from cloudlet.schemas import DEFAULT_PROJECT
from cloudlet.schemas.rollouts import Rollout

router = APIRouter(prefix="/v1/rollouts", tags=["rollouts"])


@router.get("", response_model=list[Rollout])
def list_rollouts(
    session: DB,
    user: User,
    app: str | None = Query(None, max_length=63, description="Only this app's rollouts."),
    project: str | None = Query(None, max_length=63),
    limit: int = Query(20, ge=1, le=500),
) -> list[Rollout]:
    """Newest first, without their items (GET /v1/rollouts/{id} has them)."""
    scope = scope_project(user, project)
    app_id = None
    if app is not None:
        row = catalog.get_app(session, scope or DEFAULT_PROJECT, app)
        if row is None:
            raise NotFoundError(f"app {app!r} not found")
        app_id = row.id
    rows = rollouts.list_rollouts(session, scope, app_id, limit)
    return [rollouts.rollout_view(session, r, with_items=False) for r in rows]


@router.get("/{rollout_id}", response_model=Rollout)
def show_rollout(rollout_id: str, session: DB, user: User) -> Rollout:
    rollout = rollouts.get_rollout(session, scope_project(user), rollout_id)
    if rollout is None:
        raise NotFoundError(f"rollout {rollout_id!r} not found")
    return rollouts.rollout_view(session, rollout)
