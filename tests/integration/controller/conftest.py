"""A real controller process per test, on SQLite and on PostgreSQL (and on the blob
backend of the ``blobs`` fixture), and an admin client.

These tests play the agent with hand-made requests (a bare credential, no client
certificate), so their controller runs ``--insecure``; mutual TLS for agents is tested in
``fleet/test_tls.py``, and the fuzz of other callers runs over TLS."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cloudlet.testbed.local import LocalController
from s3 import BlobBackend


@pytest.fixture
def controller(
    tmp_path: Path, database_url: str | None, blobs: BlobBackend
) -> Iterator[LocalController]:
    ctl = LocalController(
        tmp_path / "controller", database_url=database_url, env=blobs.env(), insecure=True
    ).start()
    try:
        yield ctl
    finally:
        ctl.stop()


@pytest.fixture
def api(controller: LocalController) -> Iterator[httpx.Client]:
    with controller.client() as client:
        yield client
