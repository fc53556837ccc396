"""Migration 0011 (the index of sites behind their revision) upgrades and downgrades on
both backends, and the sync-lag query uses it on SQLite."""

from __future__ import annotations

from pathlib import Path

from migration_steps import indexes, migrate
from sqlalchemy import text

from cloudlet.controller.db.engine import make_engine, upgrade

NEW = {"ix_sites_behind"}


def test_liveness_indexes_go_down_and_up_again(database_url: str | None, tmp_path: Path) -> None:
    engine = make_engine(database_url or f"sqlite:///{tmp_path / 'c.db'}")
    try:
        upgrade(engine)
        assert indexes(engine, "sites") >= NEW
        migrate(engine, "0010", down=True)
        assert not NEW & indexes(engine, "sites")
        migrate(engine, "head")
        assert indexes(engine, "sites") >= NEW
    finally:
        engine.dispose()


def test_sqlite_plans_the_sync_lag_query_on_the_index(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'c.db'}")
    try:
        upgrade(engine)
        with engine.connect() as conn:

            def plan(sql: str) -> str:
                return " ".join(row[-1] for row in conn.execute(text(f"EXPLAIN QUERY PLAN {sql}")))

            behind = plan(
                "SELECT id FROM sites WHERE availability = 'online' AND "
                "applied_revision < revision AND revision_changed_at <= '2026-01-01'"
            )
            assert "ix_sites_behind" in behind
    finally:
        engine.dispose()
