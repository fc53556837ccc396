"""Moving instances between sites: epochs, departures, handoffs.

Every move bumps the instance's epoch. The site it leaves gets a *departure*: its
desired state names the instance deleted at the new epoch (in deltas; a snapshot
just leaves it out), so an agent that comes back from a partition stops its
stale copy. A handoff of a process instance is brokered here::

    requested    the source's desired entry carries a handoff order (role source):
                 it stops the instance and uploads its state directories
    transferred  the upload landed: the instance now belongs to the destination
                 (epoch + 1), whose entry carries the order with role destination:
                 it downloads the state, then starts
    done         the destination reported it running
    failed       the source could not hand over (or the order timed out): the order
                 is withdrawn and the source runs the instance again

A *relocation* (failover, or a move off a site that is gone) skips the transfer:
the destination starts the instance from its app's definition.
"""

from __future__ import annotations

import hmac
import secrets
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from cloudlet import placement
from cloudlet.controller.db.models import App, Handoff, Instance, InstanceDeparture, Site
from cloudlet.controller.services._util import new_id, utcnow
from cloudlet.controller.services.fleet import record
from cloudlet.controller.services.instances import bump_revision, candidates
from cloudlet.errors import ConflictError
from cloudlet.schemas import ActualState, ComponentKind, DesiredState, SiteState
from cloudlet.schemas import relay as relay_wire
from cloudlet.schemas.mobility import HandoffOrder, HandoffPhase, HandoffRole

REQUESTED, READY = HandoffPhase.REQUESTED.value, HandoffPhase.READY.value
TRANSFERRED = HandoffPhase.TRANSFERRED.value
OPEN = (REQUESTED, READY, TRANSFERRED)


def _elapsed(handoff: Handoff, now: datetime) -> float:
    return round((now - handoff.created_at).total_seconds(), 3)


def _phase(session: Session, handoff: Handoff, phase: HandoffPhase, **data: object) -> None:
    """Move a handoff to ``phase``, timed, with a controller event."""
    now = utcnow()
    handoff.phase = phase.value
    handoff.phases = {**handoff.phases, phase.value: _elapsed(handoff, now)}
    if phase in (HandoffPhase.DONE, HandoffPhase.FAILED):
        handoff.finished_at = now
    record(
        session,
        f"handoff.{phase.value}",
        handoff.dest_site_id if phase is not HandoffPhase.FAILED else handoff.source_site_id,
        handoff=handoff.id,
        instance=handoff.instance_id,
        handoff_kind=handoff.kind,
        bytes=handoff.bytes,
        seconds=handoff.phases[phase.value],
        **data,
    )


def open_handoff(session: Session, instance_id: str) -> Handoff | None:
    return session.scalar(
        select(Handoff).where(Handoff.instance_id == instance_id, Handoff.phase.in_(OPEN))
    )


def _role(handoff: Handoff, site_id: str) -> HandoffRole | None:
    """Which part of an open handoff a site plays now, if any."""
    if handoff.kind == "process":
        if handoff.phase == REQUESTED and handoff.source_site_id == site_id:
            return HandoffRole.SOURCE
        if handoff.phase == TRANSFERRED and handoff.dest_site_id == site_id:
            return HandoffRole.DESTINATION
    elif handoff.kind == "vm":
        if handoff.phase in (REQUESTED, READY) and handoff.dest_site_id == site_id:
            return HandoffRole.DESTINATION
        if handoff.phase == READY and handoff.source_site_id == site_id:
            return HandoffRole.SOURCE
    return None


def moving_from(session: Session, site_id: str) -> bool:
    """Whether an instance is being handed off away from the site right now."""
    return (
        session.scalar(
            select(Handoff.id).where(Handoff.source_site_id == site_id, Handoff.phase.in_(OPEN))
        )
        is not None
    )


def handoff_orders(session: Session, site: Site) -> dict[str, HandoffOrder]:
    """The orders a site's desired entries carry, by instance id (moves in progress)."""
    rows = session.scalars(
        select(Handoff).where(
            Handoff.phase.in_(OPEN),
            (Handoff.source_site_id == site.id) | (Handoff.dest_site_id == site.id),
        )
    ).all()
    orders = {}
    for handoff in rows:
        role = _role(handoff, site.id)
        if role is None:
            continue
        peer = handoff.dest_site_id if role is HandoffRole.SOURCE else handoff.source_site_id
        peer_site = session.get(Site, peer)
        orders[handoff.instance_id] = HandoffOrder(
            id=handoff.id,
            role=role,
            peer_site=peer_site.name if peer_site else peer,
            kind=handoff.kind,
            address=handoff.address if role is HandoffRole.SOURCE else None,
            token=handoff.token,
            relay=handoff.relay,
        )
    return orders


def incoming(
    session: Session, site: Site, since: int, full: bool
) -> list[tuple[Instance, App, Handoff]]:
    """VM instances on their way to ``site``: it holds an entry for each (at the new
    epoch, with the order to receive it) before they are its own."""
    query = (
        select(Instance, App, Handoff)
        .join(Instance, Instance.id == Handoff.instance_id)
        .join(App, App.id == Instance.app_id)
        .where(
            Handoff.kind == "vm",
            Handoff.dest_site_id == site.id,
            Handoff.phase.in_((REQUESTED, READY)),
        )
    )
    if not full:
        query = query.where(Handoff.dest_revision > since)
    return [(i, a, h) for i, a, h in session.execute(query).all()]


def purge_departures(session: Session, site_id: str, applied: int) -> None:
    """Forget departures the site's agent has applied."""
    session.execute(
        delete(InstanceDeparture).where(
            InstanceDeparture.site_id == site_id, InstanceDeparture.revision <= applied
        )
    )


def note_running(session: Session, instance: Instance) -> None:
    """The instance reported running at its site: a handoff to it is done."""
    handoff = open_handoff(session, instance.id)
    if (
        handoff is not None
        and handoff.dest_site_id == instance.site_id
        and handoff.phase == TRANSFERRED
    ):
        _phase(session, handoff, HandoffPhase.DONE)


def _switch(session: Session, instance: Instance, dest: Site, reason: str) -> None:
    """Give the instance to ``dest`` at the next epoch; its old site gets a departure."""
    old = instance.site_id
    instance.epoch += 1
    _depart(session, instance.id, old, instance.epoch)
    # Coming back to a site it left: its entry there supersedes the departure.
    session.execute(
        delete(InstanceDeparture).where(
            InstanceDeparture.instance_id == instance.id, InstanceDeparture.site_id == dest.id
        )
    )
    instance.site_id = dest.id
    instance.revision = bump_revision(session, dest.id)
    instance.actual_state = ActualState.PENDING.value
    instance.endpoint = None
    instance.reason = reason
    instance.timings = {}
    instance.actual_updated_at = None
    instance.moved_at = instance.updated_at = utcnow()
    record(
        session, "instance.moved", dest.id, instance=instance.id, source=old, epoch=instance.epoch
    )


def _depart(session: Session, instance_id: str, site_id: str, epoch: int) -> None:
    """Tell ``site`` (by a departure in its desired state) to drop its copy, epoch < ``epoch``."""
    departure = session.get(InstanceDeparture, (instance_id, site_id))
    revision = bump_revision(session, site_id)
    if departure is None:
        session.add(
            InstanceDeparture(
                instance_id=instance_id,
                site_id=site_id,
                epoch=epoch,
                revision=revision,
                created_at=utcnow(),
            )
        )
    else:
        departure.epoch, departure.revision = epoch, revision


def _has_vm(app: App) -> bool:
    return any(c.get("kind") == ComponentKind.VM.value for c in app.components)


def _check_movable(session: Session, instance: Instance, dest: Site) -> App:
    if instance.desired_state == DesiredState.DELETED.value:
        raise ConflictError(f"instance {instance.name!r} is deleted")
    if dest.id == instance.site_id:
        raise ConflictError(f"instance {instance.name!r} is at site {dest.name!r} already")
    if dest.state != SiteState.ACTIVE.value:
        raise ConflictError(f"site {dest.name!r} is {dest.state}")
    if open_handoff(session, instance.id) is not None:
        raise ConflictError(f"instance {instance.name!r} is being moved already")
    return session.get_one(App, instance.app_id)


def _open_handoff(
    session: Session,
    instance: Instance,
    dest: Site,
    kind: str,
    reason: str,
    explanation: dict | None,
) -> Handoff:
    """Record a move of ``instance`` to ``dest`` as requested, at the next epoch."""
    handoff = Handoff(
        id=new_id(),
        instance_id=instance.id,
        project=instance.project,
        source_site_id=instance.site_id,
        dest_site_id=dest.id,
        kind=kind,
        phase=HandoffPhase.REQUESTED.value,
        reason=reason,
        epoch=instance.epoch + 1,
        bytes=0,
        phases={},
        created_at=utcnow(),
        finished_at=None,
    )
    session.add(handoff)
    session.flush()
    if explanation is not None:
        instance.placement = explanation
    return handoff


def request_move(
    session: Session,
    instance: Instance,
    dest: Site,
    reason: str,
    explanation: dict | None = None,
    *,
    relay: str | None = None,
) -> Handoff:
    """Start a handoff of ``instance`` to ``dest``: its source stops it and sends its
    state; a stopped instance simply changes sites. A VM handoff's sites meet at
    ``relay`` (host:port, or :port) when the source cannot reach the destination.

    Raises:
        ConflictError: deleted, already there or moving, destination not active, or
            the app has VM components (their live handoff is not implemented yet).
    """
    app = _check_movable(session, instance, dest)
    kind = "vm" if _has_vm(app) else "process"
    if kind == "vm" and len(app.components) != 1:
        raise ConflictError(f"app {app.name!r}: live handoff moves apps of one VM component")
    if kind == "vm" and instance.desired_state != DesiredState.RUNNING.value:
        raise ConflictError(f"instance {instance.name!r} is not running: a live handoff needs it")
    handoff = _open_handoff(session, instance, dest, kind, reason, explanation)
    record(
        session,
        "handoff.requested",
        instance.site_id,
        handoff=handoff.id,
        instance=instance.id,
        destination=dest.name,
        reason=reason,
    )
    if instance.desired_state == DesiredState.STOPPED.value:
        _switch(session, instance, dest, f"moved from a stopped state: {reason}")
        handoff.phase = HandoffPhase.DONE.value
        handoff.finished_at = utcnow()
        return handoff
    if kind == "vm":
        # The destination prepares first (base cached, a listener); the source hears
        # of the move once the destination is ready for it.
        handoff.token = secrets.token_urlsafe(24)
        handoff.relay = relay
        handoff.dest_revision = bump_revision(session, dest.id)
        return handoff
    # The actual state stays the source's word: it reports `relocating` once it acts.
    instance.revision = bump_revision(session, instance.site_id)  # the source sees the order
    return handoff


def vm_ready(session: Session, handoff: Handoff, address: str) -> None:
    """The destination listens for the VM: tell the source where to send it.

    Raises:
        ConflictError: the handoff is not waiting for its destination.
    """
    if handoff.phase == READY and handoff.address == address:
        return  # a retry
    if handoff.kind != "vm" or handoff.phase != REQUESTED:
        raise ConflictError(f"handoff {handoff.id} is {handoff.phase}, not waiting to be ready")
    handoff.address = address
    _phase(session, handoff, HandoffPhase.READY, address=address)
    instance = session.get_one(Instance, handoff.instance_id)
    instance.revision = bump_revision(session, instance.site_id)


def relay_admits(session: Session, handoff_id: str, role: bytes, proof: bytes) -> bool:
    """Whether a connection to the relay may meet its peer there: the handoff is a VM
    handoff still in flight and the proof was made with its token (``schemas.relay``)."""
    handoff = session.get(Handoff, handoff_id)
    if handoff is None or handoff.kind != "vm" or handoff.token is None:
        return False
    if handoff.phase not in (REQUESTED, READY):
        return False
    return hmac.compare_digest(proof, relay_wire.proof(handoff.token, role, handoff_id))


def vm_sent(session: Session, handoff: Handoff, nbytes: int, downtime_s: float) -> Instance:
    """The VM runs at the destination: it owns the instance now (at the next epoch).

    Raises:
        ConflictError: the handoff is not in flight.
    """
    instance = session.get_one(Instance, handoff.instance_id)
    if handoff.phase == TRANSFERRED:
        return instance  # a retry
    if handoff.kind != "vm" or handoff.phase != READY:
        raise ConflictError(f"handoff {handoff.id} is {handoff.phase}, not in flight")
    handoff.bytes = nbytes
    _switch(session, instance, session.get_one(Site, handoff.dest_site_id), handoff.reason or "")
    instance.actual_state = ActualState.RELOCATING.value
    _phase(session, handoff, HandoffPhase.TRANSFERRED, downtime_s=downtime_s)
    return instance


def relocate(
    session: Session, instance: Instance, dest: Site, reason: str, explanation: dict | None = None
) -> Handoff:
    """Move ``instance`` to ``dest`` without its state (failover): the destination starts
    it from its app's definition."""
    _check_movable(session, instance, dest)
    handoff = _open_handoff(session, instance, dest, "relocate", reason, explanation)
    _switch(session, instance, dest, reason)
    _phase(session, handoff, HandoffPhase.TRANSFERRED, reason=reason)
    return handoff


def state_path(data_dir: Path, handoff_id: str) -> Path:
    """Where the controller keeps a handoff's state archive."""
    return data_dir / "handoffs" / f"{handoff_id}.tar"


def state_received(session: Session, handoff: Handoff, size: int) -> Instance:
    """The source uploaded the state: the destination owns the instance now.

    Raises:
        ConflictError: the handoff is no longer waiting for its state.
    """
    if handoff.phase != HandoffPhase.REQUESTED.value:
        raise ConflictError(f"handoff {handoff.id} is {handoff.phase}, not waiting for state")
    instance = session.get_one(Instance, handoff.instance_id)
    handoff.bytes = size
    _switch(session, instance, session.get_one(Site, handoff.dest_site_id), handoff.reason or "")
    instance.actual_state = ActualState.RELOCATING.value
    _phase(session, handoff, HandoffPhase.TRANSFERRED)
    return instance


def fail_handoff(session: Session, handoff: Handoff, reason: str) -> None:
    """Give a handoff up before the destination took over: the source keeps it."""
    if handoff.phase not in (REQUESTED, READY):
        raise ConflictError(f"handoff {handoff.id} is {handoff.phase}; too late to fail it")
    instance = session.get(Instance, handoff.instance_id)
    handoff.reason = reason
    _phase(session, handoff, HandoffPhase.FAILED, reason=reason)
    if handoff.kind == "vm":
        # Whatever the destination took in goes: it holds a departure at the new epoch.
        _depart(session, handoff.instance_id, handoff.dest_site_id, handoff.epoch)
    if instance is not None and instance.desired_state != DesiredState.DELETED.value:
        instance.revision = bump_revision(session, instance.site_id)  # order withdrawn


def choose_site(
    session: Session,
    instance: Instance,
    grace_s: float,
    *,
    exclude: set[str],
    config: placement.PlacementConfig | None = None,
) -> placement.PlacementDecision:
    """Placement for a move of ``instance``, its current site and ``exclude`` left out.

    Raises:
        PlacementError: no other site fits.
    """
    app = session.get_one(App, instance.app_id)
    request = placement.PlacementRequest(
        app=app.name,
        resources=placement.Resources(**app.resources),
        constraints=tuple(app.constraints),
        latency_bound_ms=app.latency_bound_ms,
        client_latitude=instance.client_latitude,
        client_longitude=instance.client_longitude,
        excluded_sites=frozenset({instance.site_id, *exclude}),
    )
    return placement.place(candidates(session, grace_s), request, config)


def timed_out(session: Session, older_than_s: float) -> list[Handoff]:
    """Handoffs still waiting for their source's state after ``older_than_s``.

    A VM handoff in flight (ready) is left to its sites: the source may be sending
    it right now, and giving up here could lose the VM between them; a destination
    whose source never comes fails it itself when its listener times out.
    """
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    return list(
        session.scalars(
            select(Handoff).where(
                (Handoff.phase == REQUESTED) | ((Handoff.phase == READY) & (Handoff.kind != "vm")),
                Handoff.created_at < cutoff,
            )
        )
    )
