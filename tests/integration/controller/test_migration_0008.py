"""Migration 0008 (the instances' list-order index) upgrades and downgrades on both backends."""

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


def _indexes(engine) -> set[str]:  # type: ignore[no-untyped-def]
    return {i["name"] for i in inspect(engine).get_indexes("instances")}


def test_list_order_index_goes_down_and_up_again(database_url: str | None, tmp_path: Path) -> None:
    engine = make_engine(database_url or f"sqlite:///{tmp_path / 'c.db'}")
    try:
        upgrade(engine)
        assert "ix_instances_list_order" in _indexes(engine)
        _run(engine, "0007", down=True)
        assert "ix_instances_list_order" not in _indexes(engine)
        _run(engine, "head")
        assert "ix_instances_list_order" in _indexes(engine)
    finally:
        engine.dispose()
