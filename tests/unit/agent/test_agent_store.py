"""The agent's SQLite store: pragmas, schema version, meta, transactions."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from cloudlet.agent.store import CURSOR, SCHEMA_VERSION, Store
from cloudlet.errors import ConfigError


def test_open_sets_pragmas_and_schema_version(store: Store) -> None:
    assert store.query("PRAGMA journal_mode")[0][0] == "wal"
    assert store.query("PRAGMA synchronous")[0][0] == 2  # FULL
    assert store.query("PRAGMA foreign_keys")[0][0] == 1
    assert store.query("PRAGMA user_version")[0][0] == SCHEMA_VERSION
    tables = {r[0] for r in store.query("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"meta", "desired", "actual", "outbox"} <= tables


def test_meta_survives_reopen(tmp_path: Path) -> None:
    s = Store.open(tmp_path / "a.db")
    s.set_meta(CURSOR, 42)
    s.close()
    s = Store.open(tmp_path / "a.db")
    assert s.cursor == 42
    assert s.query("PRAGMA user_version")[0][0] == SCHEMA_VERSION
    s.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "a.db")
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(ConfigError, match="newer than this agent"):
        Store.open(tmp_path / "a.db")


def test_failed_transaction_leaves_nothing(store: Store) -> None:
    with pytest.raises(ValueError), store.transaction() as conn:
        conn.execute("INSERT INTO meta (key, value) VALUES ('a', '1')")
        raise ValueError("boom")
    assert store.get_meta("a") is None


def test_nested_transaction_joins_the_outer_one(store: Store) -> None:
    with pytest.raises(ValueError), store.transaction() as outer:
        outer.execute("INSERT INTO meta (key, value) VALUES ('a', '1')")
        with store.transaction() as inner:
            inner.execute("INSERT INTO meta (key, value) VALUES ('b', '2')")
        raise ValueError("boom")
    assert store.get_meta("a") is None
    assert store.get_meta("b") is None


def test_a_v1_store_is_migrated_in_place(tmp_path: Path) -> None:
    from cloudlet.agent.store import _MIGRATIONS

    conn = sqlite3.connect(tmp_path / "a.db")
    conn.executescript(_MIGRATIONS[0])
    conn.execute(
        "INSERT INTO actual (id, name, app, project, origin, state, state_since, updated_at) "
        "VALUES ('i1', 'n', 'a', 'p', 'controller', 'running', 0, 0)"
    )
    conn.execute("PRAGMA user_version=1")
    conn.commit()
    conn.close()
    store = Store.open(tmp_path / "a.db")
    assert store.query("PRAGMA user_version")[0][0] == SCHEMA_VERSION == 7
    row = store.query(
        "SELECT state, spec_digest, restarts, epoch, crash_restarts FROM actual WHERE id = 'i1'"
    )[0]
    assert tuple(row) == ("running", None, 0, 0, 0)
    assert store.query("SELECT count(*) FROM alarms")[0][0] == 0
    store.close()


def test_unusable_path_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "a.db").mkdir()  # a directory where the file should be
    with pytest.raises(ConfigError, match="cannot open the agent store"):
        Store.open(tmp_path / "a.db")
