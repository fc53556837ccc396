"""The outbox: events waiting for the controller's acknowledgement, by sequence number.

Sequence numbers come from a counter in ``meta``, not from SQLite's rowid, so a
number is never handed out twice even after every row up to it was deleted: the
controller stores events once per (site, seq) and would drop a reused one.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from typing import Any

from cloudlet.agent.store import NEXT_SEQ, Store, get_meta, set_meta
from cloudlet.schemas import EventKind, OutboxEvent


def append(
    conn: sqlite3.Connection,
    kind: EventKind,
    *,
    instance: str | None = None,
    data: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> int:
    """Add one event inside the caller's transaction and return its sequence number.

    Call it within :meth:`Store.transaction` together with the state change the
    event describes, so that neither is stored without the other.
    """
    seq = int(get_meta(conn, NEXT_SEQ) or 1)
    set_meta(conn, NEXT_SEQ, seq + 1)
    when = (at or datetime.now(UTC)).isoformat()
    conn.execute(
        "INSERT INTO outbox (seq, kind, instance, at, data) VALUES (?, ?, ?, ?, ?)",
        (seq, str(kind), instance, when, json.dumps(data or {}, sort_keys=True)),
    )
    return seq


def record(store: Store, kind: EventKind, **kwargs: Any) -> int:
    """Append one event in its own transaction (for events with no state change)."""
    with store.transaction() as conn:
        return append(conn, kind, **kwargs)


#: Roughly what one event costs in a report besides its data.
_EVENT_OVERHEAD = 160


def pending(store: Store, limit: int = 500, max_bytes: int = 4 << 20) -> list[OutboxEvent]:
    """The oldest events not yet acknowledged, oldest first: at most ``limit``, and
    no more than fit in about ``max_bytes`` (always at least one), so that a report
    stays within what the controller accepts."""
    rows = store.query(
        "SELECT seq, kind, instance, at, data FROM outbox ORDER BY seq LIMIT ?", (limit,)
    )
    events, size = [], 0
    for row in rows:
        size += len(row["data"]) + _EVENT_OVERHEAD
        if events and size > max_bytes:
            break
        events.append(
            OutboxEvent(
                seq=row["seq"],
                kind=EventKind(row["kind"]),
                instance=row["instance"],
                at=datetime.fromisoformat(row["at"]),
                data=json.loads(row["data"]),
            )
        )
    return events


def ack(store: Store, acked_seq: int) -> int:
    """Drop every event the controller has stored (seq <= ``acked_seq``); return how many."""
    with store.transaction() as conn:
        return conn.execute("DELETE FROM outbox WHERE seq <= ?", (acked_seq,)).rowcount


def drop(store: Store, seqs: list[int]) -> int:
    """Drop events the controller refused for good (it said why); return how many."""
    with store.transaction() as conn:
        return conn.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs]).rowcount


def skip_past(store: Store, seq: int) -> bool:
    """Make the next sequence number greater than ``seq``; True if it had to move.

    The controller drops an event whose (site, seq) it already holds, so a counter
    behind the controller's (a store restored from a backup) would lose events.
    """
    with store.transaction() as conn:
        if int(get_meta(conn, NEXT_SEQ) or 1) > seq:
            return False
        set_meta(conn, NEXT_SEQ, seq + 1)
        return True


def depth(store: Store) -> int:
    """How many events wait for an acknowledgement."""
    return int(store.query("SELECT count(*) FROM outbox")[0][0])
