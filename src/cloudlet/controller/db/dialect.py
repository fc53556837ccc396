"""Everything that differs between SQLite and PostgreSQL lives here."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, Insert, event, func, select
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
