"""Migration 0007 (alarms) upgrades and downgrades on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from migration_steps import migrate
from sqlalchemy import inspect

from cloudlet.controller.db.engine import make_engine, upgrade


def test_alarms_migration_goes_down_and_up_again(database_url: str | None, tmp_path: Path) -> None:
    engine = make_engine(database_url or f"sqlite:///{tmp_path / 'c.db'}")
    try:
        upgrade(engine)
        names = inspect(engine)
        assert "alarms" in names.get_table_names()
        assert any(
            i["name"] == "ux_alarms_active" and i["unique"] for i in names.get_indexes("alarms")
        )
        assert "crash_restarts" in {c["name"] for c in names.get_columns("instances")}
        migrate(engine, "0006", down=True)
        names = inspect(engine)
        assert "alarms" not in names.get_table_names()
        assert "availability_changed_at" not in {c["name"] for c in names.get_columns("sites")}
        assert "crash_restarts" not in {c["name"] for c in names.get_columns("instances")}
        migrate(engine, "head")
        assert "alarms" in inspect(engine).get_table_names()
    finally:
        engine.dispose()
