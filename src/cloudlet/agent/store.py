"""The agent's local store: one SQLite file: meta, desired and actual state, outbox, cache.

Durability: WAL with ``synchronous=FULL``. NORMAL would be enough to keep the file
consistent, but a power cut could then roll back the last commits, and with them
the outbox sequence counter: an event already acknowledged by the controller could
be re-issued under the same seq and be dropped there as a duplicate. An edge site
writes a few rows per second at most, so the fsync per commit is cheap insurance.

One connection shared by every thread behind a re-entrant lock; a transaction
opened while another is active on the same thread joins it.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cloudlet.errors import ConfigError

#: Each entry migrates the schema from version ``i`` to ``i + 1``.
_MIGRATIONS: list[str] = [
    """
    CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE desired (
        id TEXT PRIMARY KEY,
        origin TEXT NOT NULL DEFAULT 'controller',
        revision INTEGER NOT NULL,
        desired_state TEXT NOT NULL,
        doc TEXT NOT NULL
    );
    CREATE TABLE actual (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        app TEXT NOT NULL,
        project TEXT NOT NULL,
        origin TEXT NOT NULL,
        state TEXT NOT NULL,
        endpoint TEXT,
        reason TEXT,
        timings TEXT NOT NULL DEFAULT '{}',
        ports TEXT NOT NULL DEFAULT '{}',
        applied_revision INTEGER NOT NULL DEFAULT 0,
        state_since REAL NOT NULL,
        usage_since REAL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        instance TEXT,
        at TEXT NOT NULL,
        data TEXT NOT NULL
    );
    """,
    # v2: a fingerprint of the workload specs an instance was created with, so that
    # a changed definition replaces its workloads.
    """
    ALTER TABLE actual ADD COLUMN spec_digest TEXT;
    """,
    # v3: the artifact cache (base images by digest, overlays by id) and the base
    # images the controller wants this site to hold.
    """
    CREATE TABLE artifacts (
        kind TEXT NOT NULL,
        id TEXT NOT NULL,
        size INTEGER,
        fetched INTEGER NOT NULL DEFAULT 0,
        complete INTEGER NOT NULL DEFAULT 0,
        last_used REAL NOT NULL,
        PRIMARY KEY (kind, id)
    );
    CREATE TABLE desired_images (
        digest TEXT PRIMARY KEY
    );
    """,
    # v4: the restart generation (DesiredInstance.restarts) last applied, so that
    # each restart the controller asks for restarts the workloads once.
    """
    ALTER TABLE actual ADD COLUMN restarts INTEGER NOT NULL DEFAULT 0;
    """,
    # v5: the site's own journal of every event it recorded, kept after the
    # controller's ack: what a controller restored from a backup lost is sent again,
    # and a check can compare what the site recorded with what the controller stored.
    # ``merged_into`` names the record a folded one went into.
    """
    CREATE TABLE event_log (
        seq INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        instance TEXT,
        at TEXT NOT NULL,
        data TEXT NOT NULL,
        merged_into INTEGER
    );
    """,
    # v6: the epoch (move count) each instance runs at here, to fence stale copies.
    """
    ALTER TABLE actual ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;
    """,
    # v7: site-local alarms (raised once, cleared once: the active ones are kept here,
    # each raise and clear goes out through the outbox), and the restarts the driver
    # made on its own, which the report shows.
    """
    CREATE TABLE alarms (
        alarm_id TEXT NOT NULL,
        instance TEXT NOT NULL DEFAULT '',
        severity TEXT NOT NULL,
        reason TEXT,
        raised_at TEXT NOT NULL,
        PRIMARY KEY (alarm_id, instance)
    );
    ALTER TABLE actual ADD COLUMN crash_restarts INTEGER NOT NULL DEFAULT 0;
    """,
]

SCHEMA_VERSION = len(_MIGRATIONS)

# Meta keys.
CREDENTIAL = "credential"
SITE_ID = "site_id"
SITE_NAME = "site_name"
CONTROLLER_URL = "controller_url"
CURSOR = "desired_cursor"
NEXT_SEQ = "next_seq"
ACTUAL_VERSION = "actual_version"
ALIVE_AT = "alive_at"
CACHE_VERSION = "cache_version"
OUTBOX_COMPACTED = "outbox_compacted"
#: The agent version the controller wants here (AgentTarget JSON; empty: none).
AGENT_TARGET = "agent_target"


class Store:
    """The agent's SQLite database. Use :meth:`open`; close with :meth:`close`."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self._lock = threading.RLock()
        self.path = path

    @classmethod
    def open(cls, path: Path) -> Store:
        """Open (creating and migrating if needed) the store at ``path``.

        Raises:
            ConfigError: the file cannot be opened or was written by a newer agent.
        """
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a transaction
            # spans exactly the statements inside `transaction()`.
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"cannot open the agent store {path}: {exc}") from exc
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=10000")
            store = cls(conn, path)
            store._migrate()
        except sqlite3.Error as exc:
            conn.close()
            raise ConfigError(f"cannot open the agent store {path}: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        return store

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _migrate(self) -> None:
        with self._lock:
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise ConfigError(
                    f"agent store {self.path} has schema v{version}, newer than this "
                    f"agent (v{SCHEMA_VERSION})"
                )
            for target in range(version, SCHEMA_VERSION):
                with self.transaction() as conn:
                    for statement in _MIGRATIONS[target].split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute(f"PRAGMA user_version={target + 1}")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: everything inside commits together or not at all."""
        with self._lock:
            if self._conn.in_transaction:
                yield self._conn
                return
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def query(self, sql: str, params: tuple[object, ...] = ()) -> list[sqlite3.Row]:
        """Run a read-only statement and return every row."""
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def get_meta(self, key: str) -> str | None:
        rows = self.query("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0]["value"] if rows else None

    def set_meta(self, key: str, value: str | int | float) -> None:
        with self.transaction() as conn:
            set_meta(conn, key, value)

    @property
    def cursor(self) -> int:
        """The desired-state revision the agent holds (0: none yet)."""
        return int(self.get_meta(CURSOR) or 0)


def get_meta(conn: sqlite3.Connection, key: str) -> str | None:
    """Read one meta value inside an open transaction."""
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return row["value"] if row else None


def set_meta(conn: sqlite3.Connection, key: str, value: str | int | float) -> None:
    """Write one meta value inside an open transaction."""
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, str(value)),
    )
