"""Migration 0008 (the instances' list-order index) upgrades and downgrades on both backends."""

from __future__ import annotations

from pathlib import Path

from migration_steps import indexes, migrate

from cloudlet.controller.db.engine import make_engine, upgrade


def test_list_order_index_goes_down_and_up_again(database_url: str | None, tmp_path: Path) -> None:
    engine = make_engine(database_url or f"sqlite:///{tmp_path / 'c.db'}")
    try:
        upgrade(engine)
        assert "ix_instances_list_order" in indexes(engine, "instances")
        migrate(engine, "0007", down=True)
        assert "ix_instances_list_order" not in indexes(engine, "instances")
        migrate(engine, "head")
        assert "ix_instances_list_order" in indexes(engine, "instances")
    finally:
        engine.dispose()
