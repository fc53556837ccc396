"""What replicas of one controller share through PostgreSQL besides their data:
changes that wake long polls (LISTEN/NOTIFY), and which replica runs the fleet-wide
background loops (a session advisory lock).

With SQLite there is one process (or workers on one host): every change is made
here, or caught by ``tasks._watch_revisions``, and this process leads.
"""

from __future__ import annotations

import asyncio
import logging

import psycopg
from sqlalchemy import Engine

from cloudlet.controller.db.dialect import REVISION_CHANNEL, is_sqlite
from cloudlet.controller.state import RevisionWatcher

log = logging.getLogger(__name__)

#: The advisory lock the leading replica holds (any fixed 64-bit key).
LEADER_KEY = 0x636C6F75646C6574  # "cloudlet"
#: Seconds between a standby's attempts to take the lead, and a leader's check that
#: its lock connection lives (a dead leader's lock is freed when its session ends).
LEAD_CHECK_S = 1.0
RECONNECT_MAX_S = 10.0
#: TCP keepalives on the coordination connections, so that a cut link to the
#: database is noticed in seconds (and the server frees a dead leader's lock as
#: soon), not after the kernel's two hours.
KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,
}


def libpq_dsn(engine: Engine) -> str:
    """The engine's URL as psycopg takes it (no SQLAlchemy driver suffix)."""
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


async def _backoff(delay: float, what: str, exc: BaseException) -> float:
    log.warning("%s: %s; again in %.1f s", what, exc, delay)
    await asyncio.sleep(delay)
    return min(delay * 2, RECONNECT_MAX_S)


async def listen_revisions(engine: Engine, watcher: RevisionWatcher) -> None:
    """Wake this replica's long polls for changes any replica commits. After a
    reconnect every waiting poll is woken: a change may have come meanwhile."""
    delay = 0.5
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(
                libpq_dsn(engine), autocommit=True, **KEEPALIVES
            ) as conn:
                await conn.execute(f"LISTEN {REVISION_CHANNEL}")
                for site_id in watcher.watched:
                    watcher.notify(site_id)
                delay = 0.5
                async for note in conn.notifies():
                    watcher.notify(note.payload)
        except (psycopg.Error, OSError) as exc:
            delay = await _backoff(delay, "listening for revisions failed", exc)


class Leadership:
    """Whether this replica runs the fleet-wide loops (offline verdicts, drains,
    relocation, rollouts): the one whose session holds the advisory lock. When the
    leader dies, PostgreSQL ends its session and frees the lock, and a standby takes
    it within ``LEAD_CHECK_S``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.held = is_sqlite(engine)

    async def run(self) -> None:
        if is_sqlite(self.engine):
            return
        delay = 0.5
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    libpq_dsn(self.engine), autocommit=True, **KEEPALIVES
                ) as conn:
                    delay = 0.5
                    await self._hold(conn)
            except (psycopg.Error, OSError, TimeoutError) as exc:
                if self.held:
                    log.warning("this replica no longer leads the background loops")
                self.held = False
                delay = await _backoff(delay, "the leader lock's connection failed", exc)

    async def _hold(self, conn: psycopg.AsyncConnection) -> None:
        while True:
            # Bounded: a leader that cannot reach the database must stop leading.
            async with asyncio.timeout(2 * LEAD_CHECK_S):
                if self.held:
                    await conn.execute("SELECT 1")
                else:
                    cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (LEADER_KEY,))
                    row = await cur.fetchone()
                    if row is not None and row[0]:
                        self.held = True
                        log.info("this replica leads the background loops")
            await asyncio.sleep(LEAD_CHECK_S)
