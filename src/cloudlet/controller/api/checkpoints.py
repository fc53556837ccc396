"""Checkpoints of instances: the agents upload them and fetch the one a failover starts
from (/v1/agent/checkpoints); operators list them (/v1/instances/{ref}/checkpoints)."""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Query, Request, Response, status
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from pydantic import AwareDatetime

from cloudlet._digest import file_blake3
from cloudlet.controller.api import agent as agent_api
from cloudlet.controller.api._blob_response import OCTET, BlobResponse, blob_response
from cloudlet.controller.api.artifacts import body_chunks
from cloudlet.controller.api.deps import DB, User, load_instance
from cloudlet.controller.db.models import Checkpoint as CheckpointRow
from cloudlet.controller.services import checkpoints, fleet
from cloudlet.controller.services._store import discard, write_chunk
from cloudlet.controller.state import ControllerState
from cloudlet.errors import (
    BlobStoreError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    TooLargeError,
)
from cloudlet.schemas.mobility import Checkpoint, CheckpointKind

log = logging.getLogger(__name__)
router = APIRouter(tags=["mobility"])

#: Largest checkpoint a site may upload (a VM's changed disk and RAM, compressed).
MAX_CHECKPOINT_BYTES = 8 * 1024 * 1024 * 1024
#: The upload route, for the body guard: checkpoints stream to disk.
UPLOAD_PATH = re.compile(r"^/v1/agent/checkpoints/[^/]+$")
_ID = r"^[A-Za-z0-9_-]{8,36}$"


def checkpoint_view(row: CheckpointRow, site: str) -> Checkpoint:
    return Checkpoint(
        id=row.id,
        instance=row.instance_id,
        site=site,
        epoch=row.epoch,
        kind=CheckpointKind(row.kind),
        digest=row.digest,
        size=row.size,
        pause_s=row.pause_s,
        taken_at=row.taken_at,
        received_at=row.received_at,
    )


@router.get("/v1/instances/{ref}/checkpoints", response_model=list[Checkpoint])
def list_checkpoints(ref: str, session: DB, user: User) -> list[Checkpoint]:
    """The instance's checkpoints kept at the controller, newest first."""
    row = load_instance(session, user, ref)
    rows = checkpoints.list_for(session, row.id)
    names = fleet.site_names(session, {r.site_id for r in rows}) if rows else {}
    return [checkpoint_view(r, names.get(r.site_id, r.site_id)) for r in rows]


def _check(st: ControllerState, site_id: str, instance_id: str, epoch: int) -> None:
    with st.sessions() as session:
        checkpoints.check_upload(session, site_id, instance_id, epoch)


def _store(
    st: ControllerState,
    site_id: str,
    checkpoint_id: str,
    instance_id: str,
    path: Path,
    facts: dict[str, Any],
) -> None:
    """Publish the uploaded file as the checkpoint's blob, then record it; a refused
    one's blob is deleted, and so are the blobs of the older ones it replaces."""
    digest = file_blake3(path)
    size = path.stat().st_size
    key = checkpoints.blob_key(instance_id, checkpoint_id)
    st.artifacts.publish(path, key)
    try:
        with st.sessions.begin() as session:
            _row, gone = checkpoints.add(
                session, site_id, checkpoint_id, instance_id, digest=digest, size=size, **facts
            )
    except (ConflictError, NotFoundError):
        # Refused (the instance moved on meanwhile, say): its blob must not linger,
        # unless it is the recorded one of a retry with other bytes.
        with st.sessions() as session:
            recorded = session.get(CheckpointRow, checkpoint_id) is not None
        if not recorded:
            with contextlib.suppress(BlobStoreError):
                st.artifacts.blobs.delete(key)
        raise
    drop_blobs(st, gone)


def drop_blobs(st: ControllerState, keys: list[str]) -> None:
    """Delete checkpoints' blobs once their rows are gone (after the commit: a blob the
    store failed to delete is only an orphan)."""
    for key in keys:
        try:
            st.artifacts.blobs.delete(key)
        except BlobStoreError as exc:
            log.warning("a dropped checkpoint's blob is kept: %s", exc)


@router.put(
    "/v1/agent/checkpoints/{checkpoint_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {OCTET: {"schema": {"type": "string", "format": "binary", "minLength": 1}}},
        }
    },
)
async def upload_checkpoint(
    request: Request,
    checkpoint_id: str = PathParam(..., pattern=_ID, description="The site's id for it."),
    instance: str = Query(..., max_length=36),
    epoch: int = Query(..., ge=0, le=2**53),
    app_version: int = Query(1, ge=1, le=2**31 - 1),
    kind: CheckpointKind = Query(...),
    taken_at: AwareDatetime = Query(...),
    pause_s: float | None = Query(None, ge=0, le=86400),
) -> Response:
    """A site's checkpoint of an instance it runs (raw bytes); the id is the site's, so
    a retry stores nothing twice. Refused (409) for an epoch older than the instance's:
    a stale copy's checkpoints never replace its successor's."""
    st = agent_api._state(request)
    site = await agent_api.authenticate_request(request, st)
    await run_in_threadpool(_check, st, site.id, instance, epoch)
    path = st.artifacts.create_upload_file(f"checkpoint-{secrets.token_hex(8)}")
    try:
        result = await write_chunk(path, 0, MAX_CHECKPOINT_BYTES, body_chunks(request))
        if result.overflow:
            raise TooLargeError(f"a checkpoint is at most {MAX_CHECKPOINT_BYTES} bytes")
        if result.written == 0:
            raise InvalidInputError("the body is empty; send the checkpoint's bytes")
        facts = {
            "epoch": epoch,
            "app_version": app_version,
            "kind": kind,
            "pause_s": pause_s,
            "taken_at": taken_at,
        }
        await run_in_threadpool(_store, st, site.id, checkpoint_id, instance, path, facts)
    finally:
        discard(path)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _readable(st: ControllerState, site_id: str, checkpoint_id: str) -> tuple[str, int, str]:
    with st.sessions() as session:
        row = checkpoints.readable_by(session, site_id, checkpoint_id)
        return checkpoints.blob_key(row.instance_id, row.id), row.size, row.digest


@router.get("/v1/agent/checkpoints/{checkpoint_id}/blob", response_class=BlobResponse)
async def checkpoint_blob(checkpoint_id: str, request: Request) -> Response:
    """The checkpoint's bytes, for the site its instance is placed at; Range supported."""
    st = agent_api._state(request)
    site = await agent_api.authenticate_request(request, st)
    key, size, digest = await run_in_threadpool(_readable, st, site.id, checkpoint_id)
    return await run_in_threadpool(blob_response, request, st.artifacts.blobs, key, size, digest)
