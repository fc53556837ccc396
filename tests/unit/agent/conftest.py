"""Fixtures for the agent's unit tests: a fresh local store per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudlet.agent.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "agent.db")
    yield s
    s.close()
