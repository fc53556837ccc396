"""The partition suite's testbed: one emulated WAN (controller + site namespaces) per module."""

from __future__ import annotations

import zlib
from collections.abc import Iterator

import pytest
from partition_bed import Bed, require_root_tools

from cloudlet.testbed.wan import Wan, hello_app


@pytest.fixture(scope="module")
def bed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    require_root_tools()
    root = tmp_path_factory.mktemp("wan")
    # A short prefix of its own per module: device names are at most 15 characters.
    prefix = f"p{zlib.crc32(request.module.__name__.encode()) % 100000:05d}"
    with Wan(root, prefix=prefix, offline_grace_s=3) as wan:
        wan.api.post("/v1/apps", json=hello_app(root)).raise_for_status()
        yield Bed(wan, root)
