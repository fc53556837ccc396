"""/v1/sites: register, list, show, update, tokens, decommission."""

from __future__ import annotations

from fastapi import APIRouter, Query, status

from cloudlet.controller.api.deps import DB, State, User, load_site, require_admin, scope_project
from cloudlet.controller.services import fleet
from cloudlet.controller.services._util import utcnow
from cloudlet.controller.services.decommission import decommission
from cloudlet.controller.services.relocation import decommission_relocator
from cloudlet.schemas import JoinToken, JoinTokenCreate, Site, SiteCreate, SiteCreated, SiteUpdate

router = APIRouter(prefix="/v1/sites", tags=["sites"])


def _admin(user: User) -> None:
    require_admin(user, "managing sites")


@router.post("", status_code=status.HTTP_201_CREATED, response_model=SiteCreated)
def create_site(body: SiteCreate, session: DB, user: User, st: State) -> SiteCreated:
    _admin(user)
    site, token = fleet.create_site(session, body)
    view = fleet.site_view(site, utcnow(), st.settings.offline_grace_s)
    return SiteCreated(site=view, join_token=token)


@router.get("", response_model=list[Site])
def list_sites(session: DB, user: User, st: State) -> list[Site]:
    """Every site; ``instances`` counts only the caller's project's, unless an admin asks."""
    now, counts = utcnow(), fleet.instance_counts(session, scope_project(user))
    grace = st.settings.offline_grace_s
    return [fleet.site_view(s, now, grace, counts.get(s.id, 0)) for s in fleet.list_sites(session)]


@router.get("/{name}", response_model=Site)
def show_site(name: str, session: DB, user: User, st: State) -> Site:
    site = load_site(session, name)
    count = fleet.instance_counts(session, scope_project(user), site.id).get(site.id, 0)
    return fleet.site_view(site, utcnow(), st.settings.offline_grace_s, count)


@router.patch("/{name}", response_model=Site)
def update_site(name: str, body: SiteUpdate, session: DB, user: User, st: State) -> Site:
    _admin(user)
    site = fleet.update_site(session, load_site(session, name), body)
    return fleet.site_view(site, utcnow(), st.settings.offline_grace_s)


@router.post("/{name}/join-tokens", status_code=status.HTTP_201_CREATED, response_model=JoinToken)
def create_join_token(name: str, body: JoinTokenCreate, session: DB, user: User) -> JoinToken:
    _admin(user)
    return fleet.create_join_token(session, load_site(session, name), body.ttl_s)


@router.post("/{name}/decommission", response_model=Site)
def decommission_site(
    name: str,
    session: DB,
    user: User,
    st: State,
    force: bool = Query(
        False, description="Revoke at once, without waiting for the agent to stop instances."
    ),
) -> Site:
    """Drain the site (state ``draining``): each instance is handed off to the best other
    site, or stopped where none fits; then revoke its credential once its agent reports
    its instances gone (state ``decommissioned``). ``force`` revokes at once."""
    _admin(user)
    site = load_site(session, name)
    relocate = decommission_relocator(site, st.settings.offline_grace_s)
    site = decommission(session, site, force=force, relocate=relocate)
    session.commit()
    st.watcher.notify(site.id)
    count = fleet.instance_counts(session).get(site.id, 0)
    return fleet.site_view(site, utcnow(), st.settings.offline_grace_s, count)
