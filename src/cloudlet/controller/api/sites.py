"""/v1/sites: register, list, show, update, tokens, decommission."""

from __future__ import annotations

import re

from fastapi import APIRouter, Query, Request, Response, status

from cloudlet.controller.api.deps import DB, State, User, load_site, require_admin, scope_project
from cloudlet.controller.api.paging import MAX_LIMIT, PAGED, Cursor, limit_query, set_next
from cloudlet.controller.services import _paging as paging
from cloudlet.controller.services import fleet
from cloudlet.controller.services._util import utcnow
from cloudlet.controller.services.decommission import decommission
from cloudlet.controller.services.relocation import decommission_relocator
from cloudlet.errors import InvalidInputError
from cloudlet.schemas import (
    Availability,
    JoinToken,
    JoinTokenCreate,
    Site,
    SiteCreate,
    SiteCreated,
    SiteUpdate,
)

router = APIRouter(prefix="/v1/sites", tags=["sites"])
#: What a label key may be (as in the schemas' LabelMap).
_LABEL_KEY = re.compile(r"[A-Za-z0-9._/-]+")


def _admin(user: User) -> None:
    require_admin(user, "managing sites")


@router.post("", status_code=status.HTTP_201_CREATED, response_model=SiteCreated)
def create_site(body: SiteCreate, session: DB, user: User, st: State) -> SiteCreated:
    _admin(user)
    site, token = fleet.create_site(session, body)
    view = fleet.site_view(site, utcnow(), st.settings.offline_grace_s)
    return SiteCreated(site=view, join_token=token)


@router.get("", response_model=list[Site], responses=PAGED)
def list_sites(
    request: Request,
    response: Response,
    session: DB,
    user: User,
    st: State,
    region: str | None = Query(None, max_length=63, description="Only sites in this region."),
    availability: Availability | None = Query(
        None, description="Only sites this available now (from their last report)."
    ),
    label: list[str] = Query(
        [], max_length=64, description="Only sites with this label, as key=value (repeatable)."
    ),
    limit: int = limit_query(MAX_LIMIT, MAX_LIMIT),
    cursor: Cursor = None,
) -> list[Site]:
    """Sites by name, a page at a time; ``instances`` counts only the caller's project's,
    unless an admin asks."""
    now, grace = utcnow(), st.settings.offline_grace_s
    after = paging.decode("sites", cursor, (str,))[0] if cursor is not None else None
    rows = fleet.list_sites(
        session,
        region=region,
        availability=availability,
        labels=_labels(label),
        now=now,
        grace_s=grace,
        after=after,
        limit=limit + 1,
    )
    rows, last = paging.split_page(rows, limit)
    set_next(request, response, paging.encode("sites", [last.name]) if last else None)
    counts = fleet.instance_counts(session, scope_project(user), site_ids={s.id for s in rows})
    return [fleet.site_view(s, now, grace, counts.get(s.id, 0)) for s in rows]


def _labels(pairs: list[str]) -> dict[str, str]:
    """``key=value`` filters; InvalidInputError for anything else."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not _LABEL_KEY.fullmatch(key) or len(key) > 63 or "\x00" in value:
            raise InvalidInputError(f"label: expected key=value with a label key, got {pair!r}")
        out[key] = value
    return out


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
    relocate = decommission_relocator(site, st.settings.offline_grace_s, st.relay_address)
    site = decommission(session, site, force=force, relocate=relocate)
    session.commit()
    st.watcher.notify(site.id)
    count = fleet.instance_counts(session).get(site.id, 0)
    return fleet.site_view(site, utcnow(), st.settings.offline_grace_s, count)
