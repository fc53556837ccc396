"""Everything that differs between SQLite and PostgreSQL lives here."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, Insert, event, func, select, text
from sqlalchemy import Table as SATable
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

#: The PostgreSQL channel a site's revision bump is announced on (payload: its id).
REVISION_CHANNEL = "cloudlet_revisions"


def is_sqlite(url_or_engine: str | Engine) -> bool:
    name = url_or_engine if isinstance(url_or_engine, str) else url_or_engine.url.drivername
    return name.startswith("sqlite")


def setup_sqlite(engine: Engine) -> None:
    """WAL, foreign keys and a busy timeout on every new SQLite connection."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode is durable against process crashes; a power cut may
        # lose the last commits, which agents re-send (idempotent by design).
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.close()


def insert_ignore(table: SATable, dialect_name: str) -> Insert:
    """An INSERT that silently skips rows whose primary key exists already."""
    if dialect_name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    return sqlite.insert(table).on_conflict_do_nothing()


def announce_revision(session: Session, site_id: str) -> None:
    """On PostgreSQL, tell every replica at commit that ``site_id``'s desired state
    changed (``controller.replicas.listen_revisions`` wakes its long polls)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_notify(REVISION_CHANNEL, site_id)))


_LOCK_PROJECT = {
    # NO KEY UPDATE: it excludes other quota checks of the project but not the key-share
    # locks that inserting a row referencing the project takes (a sync report adopting
    # a site's instance), which FOR UPDATE would block, and could deadlock with.
    "postgresql": text("SELECT name FROM projects WHERE name = :name FOR NO KEY UPDATE"),
    # A write takes SQLite's one write lock (and the process's writer turn) before the
    # caller counts, so the count sees every committed creation and none can commit
    # until this transaction ends.
    "sqlite": text("UPDATE projects SET created_at = created_at WHERE name = :name"),
}


def lock_project(session: Session, name: str) -> None:
    """Hold ``name``'s project until the transaction ends: two quota checks of one
    project (on any replica) run one after the other, each counting what the other
    created, so that two creations racing for the last unit cannot both pass."""
    session.execute(_LOCK_PROJECT[session.get_bind().dialect.name], {"name": name})
