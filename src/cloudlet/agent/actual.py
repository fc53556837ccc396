"""Actual state held at the site: one row per instance, every transition with its event.

A transition updates the row, appends an INSTANCE_STATE event and (leaving
``running``) records the last usage interval, all in one transaction. Every change
bumps ``actual_version`` so the report loop knows whether the list changed.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from cloudlet.agent import outbox, usage
from cloudlet.agent.store import ACTUAL_VERSION, Store, get_meta, set_meta
from cloudlet.schemas import ActualInstance, ActualState, EventKind, InstanceOrigin

#: Phases whose duration goes into ``timings`` when the instance leaves them.
_TIMED = {ActualState.PENDING, ActualState.STARTING, ActualState.STOPPING}


@dataclass(frozen=True)
class ActualRow:
    id: str
    name: str
    app: str
    project: str
    origin: InstanceOrigin
    state: ActualState
    endpoint: str | None = None
    reason: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    applied_revision: int = 0
    state_since: float = 0.0
    usage_since: float | None = None
    updated_at: float = 0.0
    spec_digest: str | None = None
    restarts: int = 0
    epoch: int = 0
    #: Restarts the driver made after the workloads exited on their own.
    crash_restarts: int = 0

    def to_wire(self) -> ActualInstance:
        return ActualInstance(
            id=self.id,
            name=self.name,
            app=self.app,
            project=self.project,
            origin=self.origin,
            state=self.state,
            endpoint=self.endpoint,
            reason=self.reason,
            timings=self.timings,
            usage_since=(
                datetime.fromtimestamp(self.usage_since, UTC)
                if self.usage_since is not None
                else None
            ),
            updated_at=datetime.fromtimestamp(self.updated_at, UTC),
            epoch=self.epoch,
            applied_revision=self.applied_revision,
            crash_restarts=self.crash_restarts or None,
        )


def _from_row(row: sqlite3.Row) -> ActualRow:
    return ActualRow(
        id=row["id"],
        name=row["name"],
        app=row["app"],
        project=row["project"],
        origin=InstanceOrigin(row["origin"]),
        state=ActualState(row["state"]),
        endpoint=row["endpoint"],
        reason=row["reason"],
        timings=json.loads(row["timings"]),
        ports={k: int(v) for k, v in json.loads(row["ports"]).items()},
        applied_revision=row["applied_revision"],
        state_since=row["state_since"],
        usage_since=row["usage_since"],
        updated_at=row["updated_at"],
        spec_digest=row["spec_digest"],
        restarts=row["restarts"],
        epoch=row["epoch"],
        crash_restarts=row["crash_restarts"],
    )


def get(store: Store, instance_id: str) -> ActualRow | None:
    rows = store.query("SELECT * FROM actual WHERE id = ?", (instance_id,))
    return _from_row(rows[0]) if rows else None


def list_all(store: Store) -> list[ActualRow]:
    return [_from_row(r) for r in store.query("SELECT * FROM actual ORDER BY id")]


def version(store: Store) -> int:
    """A counter bumped by every change to the actual state."""
    return int(store.get_meta(ACTUAL_VERSION) or 0)


def _bump(conn: sqlite3.Connection) -> None:
    set_meta(conn, ACTUAL_VERSION, int(get_meta(conn, ACTUAL_VERSION) or 0) + 1)


def _event(conn: sqlite3.Connection, row: ActualRow, previous: ActualState | None) -> None:
    outbox.append(
        conn,
        EventKind.INSTANCE_STATE,
        instance=row.id,
        at=datetime.fromtimestamp(row.updated_at, UTC),
        data={
            "state": row.state.value,
            "previous": previous.value if previous else None,
            "reason": row.reason,
            "endpoint": row.endpoint,
            "timings": row.timings,
            # So the controller can file the event under its tenant.
            "app": row.app,
            "project": row.project,
            "epoch": row.epoch,
        },
    )


def create(
    store: Store,
    *,
    instance_id: str,
    name: str,
    app: str,
    project: str,
    origin: InstanceOrigin,
    state: ActualState = ActualState.PENDING,
    now: float | None = None,
    epoch: int = 0,
) -> ActualRow:
    """Start tracking an instance at ``epoch``, with its first INSTANCE_STATE event."""
    ts = time.time() if now is None else now
    row = ActualRow(
        instance_id, name, app, project, origin, state, state_since=ts, updated_at=ts, epoch=epoch
    )
    with store.transaction() as conn:
        conn.execute(
            "INSERT INTO actual (id, name, app, project, origin, state, state_since, updated_at, "
            "epoch) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (row.id, name, app, project, origin.value, state.value, ts, ts, epoch),
        )
        _event(conn, row, None)
        _bump(conn)
    return row


def transition(
    store: Store,
    row: ActualRow,
    state: ActualState,
    *,
    reason: str | None = None,
    endpoint: str | None = None,
    applied_revision: int | None = None,
    usage_end: float | None = None,
    timings: dict[str, float] | None = None,
    now: float | None = None,
) -> ActualRow:
    """Move an instance to ``state``, with its event and any usage, in one transaction.

    Args:
        usage_end: when the workload stopped, if known to be earlier than now (a
            workload found dead after the agent itself was down).
        timings: phase durations (seconds) measured by the caller, merged into the
            row's (e.g. ``fetch``, ``synthesize`` of a VM start).
    """
    ts = time.time() if now is None else now
    timings = {**row.timings, **(timings or {})}
    if row.state in _TIMED and state != row.state:
        timings[row.state.value] = round(ts - row.state_since, 3)
    with store.transaction() as conn:
        # The usage loop moves usage_since concurrently: trust the database, not
        # the caller's copy of the row, or an interval would be counted twice.
        current = conn.execute("SELECT usage_since FROM actual WHERE id = ?", (row.id,)).fetchone()
        since = current["usage_since"] if current else None
        if state is not ActualState.RUNNING:
            usage_since = None
            if since is not None:
                end = ts if usage_end is None else max(since, min(ts, usage_end))
                usage.append_interval(conn, row.id, row.app, row.project, since, end)
        else:
            usage_since = ts if since is None else since
        new = replace(
            row,
            state=state,
            endpoint=endpoint,
            reason=reason,
            timings=timings,
            applied_revision=row.applied_revision if applied_revision is None else applied_revision,
            state_since=ts if state != row.state else row.state_since,
            usage_since=usage_since,
            updated_at=ts,
        )
        conn.execute(
            "UPDATE actual SET state = ?, endpoint = ?, reason = ?, timings = ?, "
            "applied_revision = ?, state_since = ?, usage_since = ?, updated_at = ? WHERE id = ?",
            (
                state.value,
                endpoint,
                reason,
                json.dumps(timings),
                new.applied_revision,
                new.state_since,
                new.usage_since,
                ts,
                row.id,
            ),
        )
        _event(conn, new, row.state)
        _bump(conn)
    return new


def set_ports(store: Store, row: ActualRow, ports: dict[str, int]) -> ActualRow:
    """Persist the host ports assigned to the instance's components."""
    with store.transaction() as conn:
        conn.execute("UPDATE actual SET ports = ? WHERE id = ?", (json.dumps(ports), row.id))
    return replace(row, ports=dict(ports))


def set_spec_digest(store: Store, row: ActualRow, digest: str) -> ActualRow:
    """Remember the fingerprint of the specs the instance's workloads were built from."""
    with store.transaction() as conn:
        conn.execute("UPDATE actual SET spec_digest = ? WHERE id = ?", (digest, row.id))
    return replace(row, spec_digest=digest)


def set_restarts(store: Store, row: ActualRow, restarts: int) -> ActualRow:
    """Remember the restart generation the instance's workloads were last restarted for."""
    with store.transaction() as conn:
        conn.execute("UPDATE actual SET restarts = ? WHERE id = ?", (restarts, row.id))
    return replace(row, restarts=restarts)


def set_crash_restarts(store: Store, row: ActualRow, count: int) -> ActualRow:
    """Record how often the driver restarted the workloads on its own (reported)."""
    with store.transaction() as conn:
        conn.execute("UPDATE actual SET crash_restarts = ? WHERE id = ?", (count, row.id))
        _bump(conn)
    return replace(row, crash_restarts=count)


def set_applied(store: Store, row: ActualRow, revision: int) -> ActualRow:
    """Remember the desired revision the instance was last brought to."""
    if row.applied_revision == revision:
        return row
    with store.transaction() as conn:
        conn.execute("UPDATE actual SET applied_revision = ? WHERE id = ?", (revision, row.id))
        _bump(conn)  # reported: the controller judges rollouts by it
    return replace(row, applied_revision=revision)


def forget(store: Store, instance_ids: list[str]) -> None:
    """Drop instances whose deletion the controller has acknowledged."""
    with store.transaction() as conn:
        conn.executemany(
            "DELETE FROM actual WHERE id = ? AND state = ?",
            [(i, ActualState.DELETED.value) for i in instance_ids],
        )
