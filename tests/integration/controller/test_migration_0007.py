"""Migration 0007 (alarms) upgrades and downgrades on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from sqlalchemy import inspect

from cloudlet.controller.db.engine import alembic_config, make_engine, upgrade


def _run(engine, target: str, down: bool = False) -> None:  # type: ignore[no-untyped-def]
    with engine.begin() as connection:
        cfg = alembic_config(engine)
        cfg.attributes["connection"] = connection
        (command.downgrade if down else command.upgrade)(cfg, target)


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
        _run(engine, "0006", down=True)
        names = inspect(engine)
        assert "alarms" not in names.get_table_names()
        assert "availability_changed_at" not in {c["name"] for c in names.get_columns("sites")}
        assert "crash_restarts" not in {c["name"] for c in names.get_columns("instances")}
        _run(engine, "head")
        assert "alarms" in inspect(engine).get_table_names()
    finally:
        engine.dispose()
