"""Usage metering: instance-seconds recorded as USAGE outbox events at the site.

Each running instance carries ``usage_since``, the start of the interval not yet
recorded. Recording an interval appends its event and moves ``usage_since`` in
the same transaction, so every second is counted once whatever fails when. A
record also says what the instance was given (``vcpus``, ``memory_mib``, from its
desired definition), so that the controller can bill vCPU- and GiB-hours without
guessing which version of the app ran; a record without them (an older agent) is
billed at what the controller knows of the instance. It
also counts as a change of the actual state, so that the report carrying the
usage records carries the instances' new ``usage_since`` too (the open interval
the controller shows).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from datetime import UTC, datetime

from cloudlet.agent import outbox
from cloudlet.agent._wait import sleep_or
from cloudlet.agent.store import ACTUAL_VERSION, Store, get_meta, set_meta
from cloudlet.schemas import ActualState, EventKind

log = logging.getLogger(__name__)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def _resources(conn: sqlite3.Connection, instance: str) -> dict[str, float | int]:
    """The vCPUs and memory the instance's desired definition gives it (none if unknown)."""
    row = conn.execute(
        "SELECT json_extract(doc, '$.resources.vcpus'), "
        "json_extract(doc, '$.resources.memory_mib') FROM desired WHERE id = ?",
        (instance,),
    ).fetchone()
    if row is None or row[0] is None or row[1] is None:
        return {}
    return {"vcpus": float(row[0]), "memory_mib": int(row[1])}


def append_interval(
    conn: sqlite3.Connection, instance: str, app: str, project: str, start: float, end: float
) -> None:
    """Append one USAGE event for ``start``..``end`` (epoch seconds) if it is not empty."""
    if end <= start:
        return
    outbox.append(
        conn,
        EventKind.USAGE,
        instance=instance,
        at=datetime.fromtimestamp(end, UTC),
        data={
            "instance": instance,
            "app": app,
            "project": project,
            "seconds": round(end - start, 3),
            "start": _iso(start),
            "end": _iso(end),
            **_resources(conn, instance),
        },
    )


def flush(store: Store, now: float | None = None) -> int:
    """Record usage up to ``now`` for every running instance; return how many records."""
    end = time.time() if now is None else now
    count = 0
    with store.transaction() as conn:
        rows = conn.execute(
            "SELECT id, app, project, usage_since FROM actual "
            "WHERE state = ? AND usage_since IS NOT NULL",
            (ActualState.RUNNING.value,),
        ).fetchall()
        for row in rows:
            if end <= row["usage_since"]:
                continue
            append_interval(conn, row["id"], row["app"], row["project"], row["usage_since"], end)
            conn.execute("UPDATE actual SET usage_since = ? WHERE id = ?", (end, row["id"]))
            count += 1
        if count:
            set_meta(conn, ACTUAL_VERSION, int(get_meta(conn, ACTUAL_VERSION) or 0) + 1)
    return count


async def run_usage_loop(store: Store, interval: float, stop: asyncio.Event) -> None:
    """Record usage every ``interval`` seconds until ``stop`` is set."""
    while not stop.is_set():
        await sleep_or(stop, interval)
        if stop.is_set():
            return
        try:
            flush(store)
        except Exception:
            log.exception("recording usage failed; will retry")
