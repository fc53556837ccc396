"""Migration 0012 (checkpoints) upgrades and downgrades on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from migration_steps import migrate
from sqlalchemy import inspect

from cloudlet.controller.db.engine import make_engine, upgrade


def _columns(engine, table: str) -> set[str]:  # type: ignore[no-untyped-def]
    return {c["name"] for c in inspect(engine).get_columns(table)}


def test_checkpoints_migration_goes_down_and_up_again(
    database_url: str | None, tmp_path: Path
) -> None:
    engine = make_engine(database_url or f"sqlite:///{tmp_path / 'c.db'}")
    try:
        upgrade(engine)
        assert "checkpoints" in inspect(engine).get_table_names()
        assert {"instance_id", "epoch", "site_id", "kind", "digest", "size", "taken_at"} <= (
            _columns(engine, "checkpoints")
        )
        assert "checkpoint_interval_s" in _columns(engine, "apps")
        assert "checkpoint_id" in _columns(engine, "handoffs")
        migrate(engine, "0011", down=True)
        assert "checkpoints" not in inspect(engine).get_table_names()
        assert "checkpoint_interval_s" not in _columns(engine, "apps")
        assert "checkpoint_id" not in _columns(engine, "handoffs")
        migrate(engine, "head")
        assert "checkpoints" in inspect(engine).get_table_names()
    finally:
        engine.dispose()
