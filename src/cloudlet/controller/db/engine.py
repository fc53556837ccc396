"""Engine and session factory, and bringing the schema to the latest migration."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from cloudlet.controller.db.dialect import is_sqlite, setup_sqlite

MIGRATIONS = Path(__file__).parent / "migrations"
#: Longest a writer waits for its turn in this process (SQLite's busy timeout).
WRITER_WAIT_S = 10.0
_READS = ("SELECT", "PRAGMA")


def _queued_writer_class() -> type[sqlite3.Connection]:
    """A SQLite connection class whose transactions take turns on one lock.

    SQLite lets one connection write at a time; the others retry in its busy
    handler, which sleeps 1, 2, 5 ... up to 100 ms between tries, so under
    concurrent writes most of the time goes to sleeping. Here a connection takes
    the process's lock before the first write of a transaction and gives it back
    once the transaction has ended, and the next writer wakes at once. Writers in
    other processes still meet the busy timeout.
    """
    lock = threading.Lock()

    class QueuedWriterConnection(sqlite3.Connection):
        holds_turn = False

        def take_turn(self) -> None:
            # Bounded: a thread writing through two connections at once falls back
            # to SQLite's busy timeout instead of waiting for itself forever.
            if not self.holds_turn:
                self.holds_turn = lock.acquire(timeout=WRITER_WAIT_S)

        def _end_turn(self) -> None:
            if self.holds_turn:
                self.holds_turn = False
                lock.release()

        def commit(self) -> None:
            try:
                super().commit()
            finally:
                self._end_turn()

        def rollback(self) -> None:
            try:
                super().rollback()
            finally:
                self._end_turn()

        def close(self) -> None:
            try:
                super().close()
            finally:
                self._end_turn()

    return QueuedWriterConnection


def _queue_sqlite_writers(engine: Engine) -> None:
    @event.listens_for(engine, "before_cursor_execute")
    def _before(conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if not statement.lstrip()[:6].upper().startswith(_READS):
            conn.connection.dbapi_connection.take_turn()


def default_url(data_dir: Path) -> str:
    return f"sqlite:///{(data_dir / 'controller.db').resolve()}"


def make_engine(url: str) -> Engine:
    if is_sqlite(url):
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "factory": _queued_writer_class()},
            pool_size=20,
        )
        setup_sqlite(engine)
        _queue_sqlite_writers(engine)
        return engine
    return create_engine(url, pool_size=20, max_overflow=20, pool_pre_ping=True)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine) -> None:
    """Apply every pending migration (safe to call at each start)."""
    with engine.begin() as connection:
        cfg = alembic_config(engine)
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "head")
