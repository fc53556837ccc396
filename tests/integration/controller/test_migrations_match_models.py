"""The migrations build the schema the models describe (on both backends): a column,
an index or a constraint added to one and not the other shows here."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from cloudlet.controller.db.engine import make_engine, upgrade
from cloudlet.controller.db.models import Base


@pytest.mark.filterwarnings("ignore:Skipped unsupported reflection of expression-based index")
@pytest.mark.filterwarnings("ignore:autogenerate skipping metadata-specified expression-based")
def test_head_matches_the_models(database_url: str | None, tmp_path: Path) -> None:
    engine = make_engine(database_url or f"sqlite:///{tmp_path / 'c.db'}")
    try:
        upgrade(engine)
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == []
    finally:
        engine.dispose()
