"""/v1/agent-packages and a site's agent target: what agent upgrades are made of."""

from __future__ import annotations

import re
import secrets

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from pydantic import Field

from cloudlet.controller.api._blob_response import OCTET, BlobResponse, blob_response
from cloudlet.controller.api.artifacts import BlobReader, BriefUser, body_chunks
from cloudlet.controller.api.deps import DB, State, User, load_site, require_admin
from cloudlet.controller.services import agent_packages, fleet, rollouts
from cloudlet.controller.services._store import discard, write_chunk
from cloudlet.controller.services._util import utcnow
from cloudlet.controller.state import ControllerState
from cloudlet.errors import InvalidInputError, TooLargeError
from cloudlet.schemas import Site
from cloudlet.schemas._base import Input
from cloudlet.schemas.rollouts import AgentPackage, AgentUpgradeCreate, Rollout

router = APIRouter(prefix="/v1", tags=["upgrades"])
#: The upload route, for the body guard: wheels stream to disk.
UPLOAD_PATH = re.compile(r"^/v1/agent-packages$")
#: A wheel file name, as PEP 427 spells it (parse_wheel_filename checks the rest).
_WHEEL_NAME = r"^[A-Za-z0-9_.]+-[A-Za-z0-9_.!+]+(-[0-9][^-]*)?-[^-]+-[^-]+-[^-]+\.whl$"


class AgentTargetUpdate(Input):
    version: str | None = Field(None, min_length=1, max_length=64)


def _register(st: ControllerState, filename: str, path: object) -> AgentPackage:
    with st.sessions() as session:
        row = agent_packages.add_package(session, st.artifacts, filename, path)  # type: ignore[arg-type]
        session.commit()
        return AgentPackage.model_validate(row)


@router.post(
    "/agent-packages",
    status_code=status.HTTP_201_CREATED,
    response_model=AgentPackage,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {OCTET: {"schema": {"type": "string", "format": "binary", "minLength": 1}}},
        }
    },
)
async def upload_package(
    request: Request,
    user: BriefUser,
    st: State,
    filename: str = Query(
        ..., max_length=255, pattern=_WHEEL_NAME, description="The wheel's name."
    ),
) -> AgentPackage:
    """Add a wheel of the agent (raw bytes); sites upgrade to its version."""
    require_admin(user, "adding agent packages")
    path = st.artifacts.create_upload_file(f"package-{secrets.token_hex(8)}")
    try:
        limit = agent_packages.MAX_PACKAGE_BYTES
        result = await write_chunk(path, 0, limit, body_chunks(request))
        if result.overflow:
            raise TooLargeError(f"an agent package is at most {limit} bytes")
        if result.written == 0:
            raise InvalidInputError("the body is empty; send the wheel's bytes")
        return await run_in_threadpool(_register, st, filename, path)
    finally:
        discard(path)


@router.get("/agent-packages", response_model=list[AgentPackage])
def list_packages(session: DB, user: User) -> list[AgentPackage]:
    require_admin(user, "listing agent packages")
    return [AgentPackage.model_validate(p) for p in agent_packages.list_packages(session)]


@router.get("/agent-packages/{version}/blob", response_class=BlobResponse)
def package_blob(version: str, request: Request, reader: BlobReader, st: State) -> Response:
    """The wheel's bytes; HTTP Range supported. Sites fetch it with their credential."""
    with st.sessions() as session:
        row = agent_packages.get_package(session, version)
        digest, size = row.digest, row.size
    key = st.artifacts.package_key(version)
    return blob_response(request, st.artifacts.blobs, key, size, digest)


@router.put("/sites/{name}/agent-target", response_model=Site)
def set_agent_target(
    name: str, body: AgentTargetUpdate, session: DB, user: User, st: State
) -> Site:
    """Pin one site's agent version (null: leave it at whichever it runs). A version
    with no uploaded package must be one the site holds an install of (the one it
    was installed with, or an earlier upgrade's): the way back. Rollouts (POST
    /v1/upgrades/agents) do this wave by wave, with health checks."""
    require_admin(user, "upgrading agents")
    site = load_site(session, name)
    rollouts.refuse_if_upgrading_agents(session)
    agent_packages.set_agent_target(session, site, body.version)
    session.commit()
    st.watcher.notify(site.id)
    session.refresh(site)
    return fleet.site_view(site, utcnow(), st.settings.offline_grace_s)


@router.post("/upgrades/agents", status_code=status.HTTP_201_CREATED, response_model=Rollout)
def upgrade_agents(body: AgentUpgradeCreate, session: DB, user: User, st: State) -> Rollout:
    """Upgrade the sites' agents to an uploaded package in waves; a site that does not
    come back healthy at it stops the rollout, and its wave goes back."""
    require_admin(user, "upgrading agents")
    rollout = rollouts.start_agent_rollout(
        session, body.to, body.rollout, body.sites, st.settings.offline_grace_s
    )
    return rollouts.rollout_view(session, rollout)
