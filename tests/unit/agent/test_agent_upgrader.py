"""The agent's side of an upgrade against a real HTTP blob server: a cut download
resumes, the install is staged and the agent asked to switch; bad bytes are refused."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest
from agent_blob_server import CREDENTIAL, BlobServer
from agent_fakes import doc, wheel

from cloudlet import __version__
from cloudlet.agent import desired
from cloudlet.agent.store import Store
from cloudlet.agent.upgrade import record
from cloudlet.agent.upgrade.upgrader import BLOCKED, Upgrader
from cloudlet.schemas.sync import AgentTarget

VERSION = "9.9.9"


@pytest.fixture
def server() -> Iterator[BlobServer]:
    with BlobServer() as s:
        yield s


def _events(store: Store) -> list[dict[str, object]]:
    rows = store.query("SELECT data FROM outbox WHERE kind = 'agent.upgrade' ORDER BY seq")
    return [json.loads(r["data"]) for r in rows]


def _target(store: Store, data: bytes, digest: str | None = None) -> None:
    target = AgentTarget(
        version=VERSION, digest=digest or blake3.blake3(data).hexdigest(), size=len(data)
    )
    desired.apply_doc(store, doc(1, [], full=True).model_copy(update={"agent": target}))


def _upgrader(store: Store, data_dir: Path, server: BlobServer, switched: list[bool]) -> Upgrader:
    return Upgrader(
        store,
        data_dir,
        deadline_s=30,
        supervised=True,
        remote=lambda: (server.url, CREDENTIAL),
        switch=lambda: switched.append(True),
    )


def test_a_cut_wheel_download_resumes_then_the_trial_is_staged(
    store: Store, tmp_path: Path, server: BlobServer
) -> None:
    padding = os.urandom(3 << 20)  # stored, not deflated: the wheel is over 3 MiB
    data = wheel(tmp_path / "w.whl", VERSION, extra={"cloudlet/pad.bin": padding}).read_bytes()
    server.blobs[("agent-packages", VERSION)] = data
    _target(store, data)
    server.cut_next = 1 << 20
    switched: list[bool] = []
    upgrader = _upgrader(store, tmp_path / "data", server, switched)

    assert asyncio.run(upgrader._step()) is True  # cut: retry soon, what arrived is kept
    assert upgrader.last_error and not switched
    assert asyncio.run(upgrader._step()) is False
    assert server.requests[-1][1] == f"bytes={1 << 20}-"  # resumed, not started over

    assert switched == [True]
    trial = record.read(tmp_path / "data").trial
    assert trial is not None and (trial.from_version, trial.to_version) == (__version__, VERSION)
    assert trial.state == record.STAGED and trial.deadline_s == 30
    assert _events(store) == [{"phase": "staged", "from": __version__, "to": VERSION}]
    assert (tmp_path / "data" / "agent-versions" / VERSION / "bin" / "python").exists()
    assert not list((tmp_path / "data" / "agent-versions" / "downloads").iterdir())


def test_bytes_that_are_not_the_package_are_refused_and_blocked(
    store: Store, tmp_path: Path, server: BlobServer
) -> None:
    data = wheel(tmp_path / "w.whl", VERSION).read_bytes()
    server.blobs[("agent-packages", VERSION)] = data + b"tampered"
    _target(store, data)
    switched: list[bool] = []
    upgrader = _upgrader(store, tmp_path / "data", server, switched)

    assert asyncio.run(upgrader._step()) is False
    (failed,) = _events(store)
    assert failed["phase"] == "failed" and "digest" in str(failed["reason"])
    assert store.get_meta(BLOCKED) == VERSION and not switched
    asyncio.run(upgrader._step())  # blocked: not fetched again
    assert len(server.requests) == 1 and len(_events(store)) == 1
    assert record.read(tmp_path / "data").trial is None
