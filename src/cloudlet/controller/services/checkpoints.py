"""Checkpoints of instances: what sites upload, what is kept, what a failover starts from.

A site running an instance of an app with ``checkpoint_interval_s`` uploads a
checkpoint every so often (a process instance's state directories, or a VM's disk and
RAM chunks that differ from its base, with its device state). The bytes are a blob
(``checkpoints/<instance>/<id>``); a row records the instance, the epoch it was taken
at, the site, the kind, digest, size and when. Only the latest :data:`KEEP` per
instance are kept. A checkpoint from an older epoch than the instance's is refused:
the stale copy a partition left running must not overwrite its successor's.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from cloudlet.controller.db.models import Checkpoint, Handoff, Instance
from cloudlet.controller.services._util import utcnow
from cloudlet.errors import ConflictError, NotFoundError
from cloudlet.schemas import DesiredState
from cloudlet.schemas.mobility import CheckpointKind, CheckpointRestore

#: Checkpoints kept per instance: the newest, and the one before it (a restore that
#: started from it may still be reading it when the newest lands).
KEEP = 2


def blob_key(instance_id: str, checkpoint_id: str) -> str:
    return f"checkpoints/{instance_id}/{checkpoint_id}"


def check_upload(session: Session, site_id: str, instance_id: str, epoch: int) -> Instance:
    """The instance a site may upload a checkpoint of at ``epoch``.

    Raises:
        NotFoundError: no such instance (or deleted).
        ConflictError: the instance is at another site or epoch now (a stale copy).
    """
    instance = session.get(Instance, instance_id)
    if instance is None or instance.desired_state == DesiredState.DELETED.value:
        raise NotFoundError(f"instance {instance_id!r} not found")
    if epoch < instance.epoch or instance.site_id != site_id:
        raise ConflictError(
            f"instance {instance_id} is at epoch {instance.epoch} elsewhere now; a checkpoint "
            f"of epoch {epoch} from this site is stale"
        )
    if epoch > instance.epoch:
        raise ConflictError(f"instance {instance_id} is at epoch {instance.epoch}, not {epoch}")
    return instance


def add(
    session: Session,
    site_id: str,
    checkpoint_id: str,
    instance_id: str,
    *,
    epoch: int,
    app_version: int,
    kind: CheckpointKind,
    digest: str,
    size: int,
    pause_s: float | None,
    taken_at: datetime,
) -> tuple[Checkpoint, list[str]]:
    """Record an uploaded checkpoint (its blob is stored); returns it and the blob keys
    of the older ones it replaces (rows gone; the caller deletes the blobs after the
    commit). A retry of a recorded upload returns it unchanged.

    Raises:
        NotFoundError, ConflictError: as :func:`check_upload`; or the id is another's.
    """
    existing = session.get(Checkpoint, checkpoint_id)
    if existing is not None:
        if existing.instance_id != instance_id or existing.digest != digest:
            raise ConflictError(f"checkpoint {checkpoint_id} exists with other contents")
        return existing, []
    instance = check_upload(session, site_id, instance_id, epoch)
    row = Checkpoint(
        id=checkpoint_id,
        instance_id=instance_id,
        project=instance.project,
        site_id=site_id,
        epoch=epoch,
        app_version=app_version,
        kind=kind.value,
        digest=digest,
        size=size,
        pause_s=pause_s,
        taken_at=taken_at,
        received_at=utcnow(),
    )
    session.add(row)
    session.flush()
    return row, _prune(session, instance_id)


def _prune(session: Session, instance_id: str) -> list[str]:
    """Drop all but the newest KEEP checkpoints, sparing one a failover starts from."""
    held = set(
        session.scalars(
            select(Handoff.checkpoint_id).where(
                Handoff.instance_id == instance_id,
                Handoff.checkpoint_id.is_not(None),
                Handoff.finished_at.is_(None),
            )
        )
    )
    rows = list_for(session, instance_id)
    gone = [r for r in rows[KEEP:] if r.id not in held]
    for r in gone:
        session.delete(r)
    return [blob_key(r.instance_id, r.id) for r in gone]


def list_for(session: Session, instance_id: str) -> list[Checkpoint]:
    """The instance's checkpoints, newest first."""
    return list(
        session.scalars(
            select(Checkpoint)
            .where(Checkpoint.instance_id == instance_id)
            .order_by(Checkpoint.taken_at.desc(), Checkpoint.received_at.desc())
        )
    )


def latest_usable(session: Session, instance: Instance) -> Checkpoint | None:
    """The newest checkpoint a failover of ``instance`` can start from: of its current
    app version, from its current epoch or an earlier one."""
    return session.scalar(
        select(Checkpoint)
        .where(
            Checkpoint.instance_id == instance.id,
            Checkpoint.epoch <= instance.epoch,
            Checkpoint.app_version == instance.app_version,
        )
        .order_by(Checkpoint.taken_at.desc(), Checkpoint.received_at.desc())
        .limit(1)
    )


def restore_of(row: Checkpoint) -> CheckpointRestore:
    return CheckpointRestore(
        id=row.id,
        kind=CheckpointKind(row.kind),
        digest=row.digest,
        size=row.size,
        epoch=row.epoch,
        taken_at=row.taken_at,
    )


def restores(session: Session, site_id: str) -> dict[str, CheckpointRestore]:
    """Instances failing over to the site that start from a checkpoint, by instance id:
    until the site reports them running (the failover's handoff is done)."""
    rows = session.execute(
        select(Handoff.instance_id, Checkpoint)
        .join(Checkpoint, Checkpoint.id == Handoff.checkpoint_id)
        .where(
            Handoff.kind == "relocate",
            Handoff.dest_site_id == site_id,
            Handoff.finished_at.is_(None),
        )
    ).all()
    return {instance_id: restore_of(row) for instance_id, row in rows}


def readable_by(session: Session, site_id: str, checkpoint_id: str) -> Checkpoint:
    """A checkpoint the site may download: one of an instance placed there now.

    Raises:
        NotFoundError: no such checkpoint, or not the site's to read.
    """
    row = session.get(Checkpoint, checkpoint_id)
    instance = session.get(Instance, row.instance_id) if row is not None else None
    if row is None or instance is None or instance.site_id != site_id:
        raise NotFoundError(f"checkpoint {checkpoint_id!r} not found")
    return row


def forget_instance(session: Session, instance_id: str) -> list[str]:
    """Drop an instance's checkpoints (it is purged); returns their blob keys."""
    rows = list_for(session, instance_id)
    for r in rows:
        session.delete(r)
    return [blob_key(r.instance_id, r.id) for r in rows]
