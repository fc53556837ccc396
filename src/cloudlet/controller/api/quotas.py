"""/v1/projects/{name}/quota: a project's limits and what it uses of each.

Its own module, beside the projects router identity adds, so that the two merge
without touching each other.
"""

from __future__ import annotations

from fastapi import APIRouter

from cloudlet.controller.api.deps import DB, User, require_admin
from cloudlet.controller.services import quotas
from cloudlet.controller.services.projects import require_project
from cloudlet.errors import NotFoundError
from cloudlet.schemas.quotas import Quota, QuotaUpdate

router = APIRouter(prefix="/v1/projects/{name}/quota", tags=["quotas"])


@router.get("", response_model=Quota)
def show_quota(name: str, session: DB, user: User) -> Quota:
    """The project's limits (null: unlimited), its usage and the quotas it is over.
    Members and readers see their own project's only."""
    if user.role != "admin" and name != user.project:
        raise NotFoundError(f"project {name!r} not found")
    require_project(session, name)
    return quotas.quota_view(session, name)


@router.put("", response_model=Quota)
def set_quota(name: str, body: QuotaUpdate, session: DB, user: User) -> Quota:
    """Set some of the project's limits (admins): an omitted field keeps its value,
    null makes it unlimited. Lowering a limit below the usage deletes nothing; the
    project may create nothing more of it until its usage falls below."""
    require_admin(user, "setting quotas")
    require_project(session, name)
    quotas.set_limits(session, name, body)
    return quotas.quota_view(session, name)
