"""The outbox: events waiting for the controller's acknowledgement, by sequence number.

Sequence numbers come from a counter in ``meta``, not from SQLite's rowid, so a
number is never handed out twice even after every row up to it was deleted: the
controller stores events once per (site, seq) and would drop a reused one.

Every event is also written to ``event_log``, which an ack does not empty (it
keeps the last :data:`LOG_KEEP`): the site's own record of what it said. A
controller restored from an older backup has lost what it acknowledged since;
:func:`replay` puts the journal back in the outbox, and since the controller
stores by (site, seq), what it still holds is ignored and what it lost is filled.

The outbox has a soft cap (:func:`compact`). Past it, nothing that bills or tells
a lifecycle is dropped: usage intervals of one instance that follow each other (at the same
resources) are merged into one record (same seconds, one row), and repeated alarms with the same
message are folded into the newest, which counts them (never a raise or clear of a
stateful alarm: those come once each by construction, and their order matters).
Lifecycle events (agent started, instance created, state changes) are kept one by
one, so the cap only
bounds what can be folded; the number folded is kept in ``meta`` and reported in
an alarm.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from cloudlet.agent.store import NEXT_SEQ, OUTBOX_COMPACTED, Store, get_meta, set_meta
from cloudlet.schemas import EventKind, OutboxEvent

#: Events kept in ``event_log`` after their ack.
LOG_KEEP = 50_000
#: Default soft cap on the outbox, in events.
DEFAULT_CAP = 50_000


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
    conn.execute(
        "INSERT INTO event_log (seq, kind, instance, at, data) "
        "SELECT seq, kind, instance, at, data FROM outbox WHERE seq = ?",
        (seq,),
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


def ack(store: Store, acked_seq: int, sent: Sequence[int] | None = None) -> int:
    """Drop every event the controller has stored (seq <= ``acked_seq``); return how many.

    With ``sent`` (the seqs of the acknowledged report), only those go: events put
    back by :func:`replay` while the report was in flight are older than its
    newest, and were not sent.
    """
    with store.transaction() as conn:
        conn.execute("DELETE FROM event_log WHERE seq <= ?", (acked_seq - LOG_KEEP,))
        if sent is None:
            return conn.execute("DELETE FROM outbox WHERE seq <= ?", (acked_seq,)).rowcount
        gone = [seq for seq in sent if seq <= acked_seq]
        marks = ",".join("?" * len(gone))
        return (
            conn.execute(f"DELETE FROM outbox WHERE seq IN ({marks})", gone).rowcount if gone else 0
        )


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


def replay(store: Store) -> int:
    """Put every journalled event not folded away back in the outbox; return how many.

    For a controller that went back in time: it ignores what it already holds.
    """
    with store.transaction() as conn:
        return conn.execute(
            "INSERT INTO outbox (seq, kind, instance, at, data) "
            "SELECT seq, kind, instance, at, data FROM event_log "
            "WHERE merged_into IS NULL AND seq NOT IN (SELECT seq FROM outbox)"
        ).rowcount


def last_seq(store: Store) -> int:
    """The highest seq waiting in the outbox (0 if empty)."""
    return int(store.query("SELECT coalesce(max(seq), 0) FROM outbox")[0][0])


def depth(store: Store) -> int:
    """How many events wait for an acknowledgement."""
    return int(store.query("SELECT count(*) FROM outbox")[0][0])


def compacted(store: Store) -> int:
    """How many records :func:`compact` has folded into others, ever."""
    return int(store.get_meta(OUTBOX_COMPACTED) or 0)


def compact(store: Store, cap: int, after: int = 0) -> int:
    """Fold what may be folded once the outbox holds more than ``cap`` events.

    Only events with seq > ``after`` are folded: pass the highest seq ever sent. An
    event in a report that got no answer may be stored at the controller already,
    and folding it into a later record would count it twice.

    Returns:
        How many records were folded into others (0 under the cap).
    """
    with store.transaction() as conn:
        if int(conn.execute("SELECT count(*) FROM outbox").fetchone()[0]) <= cap:
            return 0
        folded = _merge_usage(conn, after) + _fold_alarms(conn, after)
        if folded:
            total = int(get_meta(conn, OUTBOX_COMPACTED) or 0) + folded
            set_meta(conn, OUTBOX_COMPACTED, total)
            append(
                conn,
                EventKind.ALARM,
                data={
                    "severity": "warning",
                    "message": "outbox over its cap: records folded",
                    "cap": cap,
                    "folded": folded,
                    "folded_total": total,
                },
            )
        return folded


def _fold(conn: sqlite3.Connection, into: int, seqs: list[int], data: dict[str, Any]) -> None:
    doc = json.dumps(data, sort_keys=True)
    conn.execute("UPDATE outbox SET data = ? WHERE seq = ?", (doc, into))
    conn.execute("UPDATE event_log SET data = ? WHERE seq = ?", (doc, into))
    marks = ",".join("?" * len(seqs))
    conn.execute(f"DELETE FROM outbox WHERE seq IN ({marks})", seqs)
    conn.execute(f"UPDATE event_log SET merged_into = ? WHERE seq IN ({marks})", [into, *seqs])


def _of_kind(conn: sqlite3.Connection, kind: EventKind, after: int) -> list[sqlite3.Row]:
    query = "SELECT seq, instance, data FROM outbox WHERE kind = ? AND seq > ? ORDER BY seq"
    return conn.execute(query, (str(kind), after)).fetchall()


def _follows(previous: dict[str, Any], data: dict[str, Any]) -> bool:
    """``data`` starts where ``previous`` ended, with the same resources (billed alike)."""
    same = all(previous.get(k) == data.get(k) for k in ("vcpus", "memory_mib"))
    return same and previous.get("end") == data.get("start")


def _merge_usage(conn: sqlite3.Connection, after: int) -> int:
    """Merge each run of back-to-back usage intervals of one instance into its last record."""
    rows = _of_kind(conn, EventKind.USAGE, after)
    runs: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    done: list[list[tuple[int, dict[str, Any]]]] = []
    for row in rows:
        data = json.loads(row["data"])
        run = runs.get(row["instance"])
        if run and _follows(run[-1][1], data):
            run.append((row["seq"], data))
            continue
        if run:
            done.append(run)
        runs[row["instance"]] = [(row["seq"], data)]
    folded = 0
    for run in [*done, *runs.values()]:
        if len(run) < 2:
            continue
        last_seq, last = run[-1]
        seconds = sum(float(d["seconds"]) for _, d in run)
        merged = {**last, "start": run[0][1]["start"], "seconds": round(seconds, 3)}
        merged["records"] = sum(int(d.get("records", 1)) for _, d in run)
        _fold(conn, last_seq, [seq for seq, _ in run[:-1]], merged)
        folded += len(run) - 1
    return folded


def _fold_alarms(conn: sqlite3.Connection, after: int) -> int:
    """Fold repeated alarms (same instance, same message) into the newest, which counts them."""
    rows = _of_kind(conn, EventKind.ALARM, after)
    groups: dict[tuple[str | None, str], list[tuple[int, dict[str, Any]]]] = {}
    for row in rows:
        data = json.loads(row["data"])
        if "state" in data:  # a raise or clear (cloudlet.agent.alarms): kept in order
            continue
        groups.setdefault((row["instance"], str(data.get("message"))), []).append(
            (row["seq"], data)
        )
    folded = 0
    for group in groups.values():
        if len(group) < 2:
            continue
        last_seq, last = group[-1]
        merged = {**last, "repeats": sum(int(d.get("repeats", 1)) for _, d in group)}
        _fold(conn, last_seq, [seq for seq, _ in group[:-1]], merged)
        folded += len(group) - 1
    return folded
