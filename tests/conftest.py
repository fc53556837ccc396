"""Fixtures shared by the whole suite: database backends and real processes."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloudlet.errors import DriverUnavailableError
from cloudlet.testbed.guest import GuestImage, build_guest
from postgres import create_database, pg_bindir, postgres_server
from s3 import BlobBackend, S3Server, s3_server

_db_counter = itertools.count()


@pytest.fixture(scope="session")
def guest() -> GuestImage:
    """The tiny real guest (Debian kernel, busybox, ext4 root), built once per run
    and cached across runs by its inputs."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cloudlet-test-guest"
    try:
        return build_guest(cache)
    except DriverUnavailableError as exc:
        pytest.skip(f"cannot build the test guest: {exc}")


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


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Server]:
    with s3_server() as server:
        yield server


@pytest.fixture
def blobs(request: pytest.FixtureRequest) -> BlobBackend:
    """The controller's blob backend: filesystem unless a test is parametrised over
    ``["filesystem", "s3"]`` with ``indirect=True``; S3 gets a fresh bucket."""
    name = getattr(request, "param", "filesystem")
    if name == "filesystem":
        return BlobBackend(name)
    server: S3Server = request.getfixturevalue("s3")
    return BlobBackend(name, server, server.new_bucket())


#: Test directories that share something machine-wide, and run as one unit on one
#: worker, one test after another: the emulated WAN's namespaces and subnets.
SHARED_UNITS = {"tests/partition/": "wan"}


def _unit(nodeid: str) -> str:
    """The unit of work a test belongs to under ``pytest -n N``: its module (so that
    module-scoped fixtures start once), or its shared directory's unit."""
    module = nodeid.split("::", 1)[0]
    return next(
        (unit for prefix, unit in SHARED_UNITS.items() if module.startswith(prefix)), module
    )


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Schedule by :func:`_unit` (``--dist loadgroup`` could do it with markers, but
    pytest 9 no longer lets xdist rename the test ids it groups by)."""
    from xdist.scheduler import LoadScopeScheduling

    class ByUnit(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _unit(nodeid)

    return ByUnit(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The shared units go first: the longest one must not start last and end alone."""
    items.sort(key=lambda item: _unit(item.nodeid) not in SHARED_UNITS.values())
