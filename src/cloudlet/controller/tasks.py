"""Background loops of a controller process: liveness verdicts, waking long polls
for changes made by other replicas, flushing traffic and fetch counters and heartbeats,
finishing the drains of decommissioned sites, relocation and rollout passes."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from sqlalchemy import bindparam, func, select, update

from cloudlet.controller import relay
from cloudlet.controller.db.dialect import is_sqlite
from cloudlet.controller.db.models import Site
from cloudlet.controller.replicas import Leadership, listen_revisions
from cloudlet.controller.services import (
    alarms,
    artifact_fetches,
    decommission,
    relocation,
    rollouts,
    sync,
)
from cloudlet.controller.services._util import utcnow
from cloudlet.controller.services.fleet import record_many
from cloudlet.controller.state import ControllerState
from cloudlet.schemas import Availability

log = logging.getLogger(__name__)


def judge_liveness(st: ControllerState) -> list[tuple[str, str]]:
    """Flip availability for sites that crossed the grace period; one event per flip.

    Conditional updates make the verdict race-free between replicas.
    The same pass raises site.offline for each site judged offline and clears it for
    sites back online for ``alarms.clear_hold_s`` (see ``alarms.judge_site_alarms``), and
    judges site.sync-lag (``alarms.judge_sync_lag``).
    """
    now = utcnow()
    grace = st.settings.offline_grace_s
    cutoff = now - timedelta(seconds=grace)
    flips: list[tuple[str, str]] = []
    with st.sessions.begin() as session:
        for new, cond in (
            (Availability.OFFLINE, (Site.availability == "online") & (Site.last_seen < cutoff)),
            (
                Availability.ONLINE,
                Site.availability.in_([Availability.OFFLINE.value, Availability.UNKNOWN.value])
                & (Site.last_seen >= cutoff),
            ),
        ):
            changed = {"availability": new.value, "availability_changed_at": now}
            # Rows locked in site-id order first, as the heartbeat batches lock them.
            locked = select(Site.id).where(cond).order_by(Site.id).with_for_update()
            flip = update(Site).where(Site.id.in_(locked), cond).values(changed)
            ids = session.scalars(flip.returning(Site.id)).all()
            record_many(session, f"site.{new.value}", list(ids))
            flips += [(site_id, new.value) for site_id in ids]
        offline = [site_id for site_id, new in flips if new == Availability.OFFLINE.value]
        alarms.judge_site_alarms(session, offline, grace, st.settings.alarms.clear_hold_s)
        alarms.judge_sync_lag(session, st.settings.alarms.sync_lag_s)
    return flips


def next_verdict_in(st: ControllerState) -> float | None:
    """Seconds until the next online site crosses the grace if it stays silent (None:
    no site is online), so that the verdict comes on time rather than a pass later."""
    with st.sessions() as session:
        oldest = session.scalar(
            select(func.min(Site.last_seen)).where(Site.availability == "online")
        )
    if oldest is None:
        return None
    due = oldest + timedelta(seconds=st.settings.offline_grace_s)
    return (due - utcnow()).total_seconds()


async def _judge_liveness(st: ControllerState, leader: Leadership, most_s: float) -> None:
    """Judge liveness every ``most_s`` seconds, and at the moment a site's grace runs
    out: its site.offline alarm is raised within one grace period of its silence."""
    while True:
        wait = most_s
        if leader.held:
            try:
                await asyncio.to_thread(judge_liveness, st)
                due = await asyncio.to_thread(next_verdict_in, st)
                if due is not None:
                    wait = min(most_s, max(0.05, due + 0.01))
            except Exception:
                log.exception("liveness pass failed; will retry")
        await asyncio.sleep(wait)


def finish_drains(st: ControllerState) -> list[str]:
    """Revoke the credential of every draining site whose agent reported its instances gone."""
    with st.sessions.begin() as session:
        return decommission.finish_drains(session)


def flush_traffic(st: ControllerState) -> None:
    """Add the counted bytes to the site rows, in site-id order like the heartbeat
    batch (no lock-order deadlocks); counts that fail to be written are kept."""
    pending = st.traffic.take()
    if not pending:
        return
    table = Site.__table__
    rows = [{"sid": k, "bin": v[0], "bout": v[1]} for k, v in sorted(pending.items())]
    try:
        with st.sessions.begin() as session:
            session.connection().execute(
                update(table)
                .where(table.c.id == bindparam("sid"))
                .values(
                    bytes_in=table.c.bytes_in + bindparam("bin"),
                    bytes_out=table.c.bytes_out + bindparam("bout"),
                ),
                rows,
            )
    except Exception:
        for site_id, (bytes_in, bytes_out) in pending.items():
            st.traffic.add(site_id, bytes_in, bytes_out)
        raise


def flush_fetches(st: ControllerState) -> None:
    """Write the artifact bytes counted since the last flush (metering); counts that
    fail to be written are kept for the next."""
    since, counts = st.fetches.take()
    if since is None or not counts:
        return
    try:
        with st.sessions.begin() as session:
            artifact_fetches.write(session, since, counts, utcnow())
    except Exception:
        st.fetches.put_back(since, counts)
        raise


#: Seconds between rollout passes: a wave's health is judged this often.
ROLLOUT_PASS_S = 1.0

#: Seconds between heartbeat writes: small against the offline grace period (30 s).
HEARTBEAT_FLUSH_S = 1.0


def write_heartbeats(st: ControllerState, pending: dict[str, dict[str, object]]) -> None:
    if not pending:
        return
    with st.sessions.begin() as session:
        sync.write_heartbeats(session.connection(), pending)


def flush_heartbeats(st: ControllerState) -> None:
    """Write every buffered heartbeat now (at shutdown; call from the event loop)."""
    write_heartbeats(st, st.heartbeats.take())


async def _flush_heartbeats(st: ControllerState, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        # Taken on the event loop, where reports add them, so none slips between.
        pending = st.heartbeats.take()
        try:
            await asyncio.to_thread(write_heartbeats, st, pending)
        except Exception:
            log.exception("writing %d heartbeats failed; will retry", len(pending))
            for site_id, values in pending.items():
                st.heartbeats.pending.setdefault(site_id, values)


def changed_sites(st: ControllerState, since_s: float) -> list[str]:
    cutoff = utcnow() - timedelta(seconds=since_s)
    with st.sessions() as session:
        return list(session.scalars(select(Site.id).where(Site.revision_changed_at >= cutoff)))


async def _every(interval: float, fn, *args, leader: Leadership | None = None) -> None:  # type: ignore[no-untyped-def]
    """Run ``fn`` every ``interval`` seconds (only while leading, given a ``leader``)."""
    while True:
        await asyncio.sleep(interval)
        if leader is not None and not leader.held:
            continue
        try:
            await asyncio.to_thread(fn, *args)
        except Exception:
            log.exception("background task %s failed; will retry", fn.__name__)


async def _watch_revisions(st: ControllerState, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        if not st.watcher.watched:
            continue
        try:
            for site_id in await asyncio.to_thread(changed_sites, st, interval * 3):
                st.watcher.notify(site_id)
        except Exception:
            log.exception("revision watch failed; will retry")


def relocate_once(st: ControllerState, memory: relocation.RelocationMemory) -> set[str]:
    """One relocation pass in its own transaction; returns the sites to wake."""
    with st.sessions.begin() as session:
        result = relocation.relocation_pass(
            session, st.settings.offline_grace_s, st.settings.mobility, memory, st.relay_address
        )
    return result.sites


def advance_rollouts(st: ControllerState) -> set[str]:
    """One pass over the running rollouts in its own transaction; the sites to wake."""
    with st.sessions.begin() as session:
        return rollouts.advance(session, st.settings.offline_grace_s).sites


async def _lead_and_wake(
    st: ControllerState,
    interval: float,
    leader: Leadership,
    fn,
    *args,  # type: ignore[no-untyped-def]
) -> None:
    """Every ``interval`` seconds while leading, run ``fn`` (in a thread) and wake the
    long polls of the sites whose desired state it changed."""
    while True:
        await asyncio.sleep(interval)
        if not leader.held:
            continue
        try:
            for site_id in await asyncio.to_thread(fn, st, *args):
                st.watcher.notify(site_id)
        except Exception:
            log.exception("background pass %s failed; will retry", fn.__name__)


def start(st: ControllerState) -> list[asyncio.Task[None]]:
    """Start the background loops. Those that act on the whole fleet run only in the
    replica that leads (see ``replicas.Leadership``); the others in every process."""
    st.watcher.bind(asyncio.get_running_loop())
    leader = st.leadership = Leadership(st.engine)
    # Often enough that a site back online (and its alarm's clear) is seen within a
    # fifth of the grace, 2.5 s at most; offline verdicts come at their deadline.
    liveness_every = max(0.2, min(2.5, st.settings.offline_grace_s / 5))
    extra = [asyncio.create_task(st.alarm_webhook.run())] if st.alarm_webhook else []
    if st.settings.mobility.relay:
        extra.append(asyncio.create_task(relay.run(st)))
    if is_sqlite(st.engine):
        extra.append(asyncio.create_task(_watch_revisions(st, 1.0)))
    else:
        extra.append(asyncio.create_task(listen_revisions(st.engine, st.watcher)))
    return [
        *extra,
        asyncio.create_task(leader.run()),
        asyncio.create_task(_judge_liveness(st, leader, liveness_every)),
        asyncio.create_task(_every(2.0, flush_traffic, st)),
        asyncio.create_task(_every(2.0, flush_fetches, st)),
        asyncio.create_task(_every(1.0, finish_drains, st, leader=leader)),
        asyncio.create_task(_flush_heartbeats(st, HEARTBEAT_FLUSH_S)),
        asyncio.create_task(
            _lead_and_wake(
                st,
                st.settings.mobility.interval_s,
                leader,
                relocate_once,
                relocation.RelocationMemory(),
            )
        ),
        asyncio.create_task(_lead_and_wake(st, ROLLOUT_PASS_S, leader, advance_rollouts)),
    ]
