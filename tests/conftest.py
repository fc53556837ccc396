"""Fixtures shared by the whole suite: database backends and real processes."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from postgres import create_database, pg_bindir, postgres_server

_db_counter = itertools.count()


@pytest.fixture(scope="session")
def postgres_base_url() -> Iterator[str]:
    if pg_bindir() is None:
        pytest.skip("PostgreSQL is not installed (scripts/test installs it when run as root)")
    with postgres_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str | None:
    """Run the test once on SQLite (the default, None) and once on PostgreSQL."""
    if request.param == "sqlite":
        return None
    base = request.getfixturevalue("postgres_base_url")
    return create_database(base, f"cloudlet_test_{next(_db_counter)}")
