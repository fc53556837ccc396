"""Steps the migration tests share: move a database to an Alembic revision, and read
what its tables hold now."""

from __future__ import annotations

from alembic import command
from sqlalchemy import Engine, inspect

from cloudlet.controller.db.engine import alembic_config


def migrate(engine: Engine, target: str, down: bool = False) -> None:
    """Upgrade (or, with ``down``, downgrade) the database to revision ``target``."""
    with engine.begin() as connection:
        cfg = alembic_config(engine)
        cfg.attributes["connection"] = connection
        (command.downgrade if down else command.upgrade)(cfg, target)


def indexes(engine: Engine, table: str) -> set[str]:
    return {i["name"] for i in inspect(engine).get_indexes(table)}
