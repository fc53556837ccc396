"""The site's checkpoint loop: taken when due, kept while the controller is away (only
the newest per instance), sent when it is back, dropped when refused."""

from __future__ import annotations

import asyncio
import io
import tarfile
from pathlib import Path
from typing import Any

from agent_fakes import doc, instance

from cloudlet.agent import actual, desired, outbox
from cloudlet.agent._specs import DriverSet
from cloudlet.agent.checkpoints import Checkpointer
from cloudlet.agent.store import Store
from cloudlet.compute.fake import FakeDriver
from cloudlet.errors import ControllerUnreachableError, SyncError
from cloudlet.schemas import ActualState, EventKind, InstanceOrigin


class _Controller:
    """Takes checkpoint uploads, or fails them as told."""

    def __init__(self) -> None:
        self.fail: Exception | None = None
        self.got: list[tuple[str, bytes, dict[str, Any]]] = []

    async def upload_checkpoint(self, cid: str, path: Path, params: dict[str, Any]) -> None:
        if self.fail is not None:
            raise self.fail
        self.got.append((cid, path.read_bytes(), params))


def _running(store: Store, tmp_path: Path) -> Path:
    inst = instance(components=[{"command": ["x"], "stateful": True}]).model_copy(
        update={"checkpoint_interval_s": 1.0, "epoch": 3}
    )
    desired.apply_doc(store, doc(1, [inst], full=True))
    actual.create(
        store, instance_id="i1", name=inst.name, app=inst.app, project=inst.project,
        origin=InstanceOrigin.CONTROLLER, state=ActualState.RUNNING, epoch=3,
    )  # fmt: skip
    state = tmp_path / "state" / "i1" / "main"
    state.mkdir(parents=True)
    return state


def _phases(store: Store) -> list[str]:
    return [e.data["phase"] for e in outbox.pending(store) if e.kind is EventKind.CHECKPOINT]


def test_offline_keeps_the_newest_and_sends_it_when_back(store: Store, tmp_path: Path) -> None:
    state = _running(store, tmp_path)
    controller = _Controller()
    cp = Checkpointer(
        store, tmp_path / "state", tmp_path / "spool", DriverSet(FakeDriver()), None,
        controller,  # type: ignore[arg-type]
    )  # fmt: skip
    controller.fail = ControllerUnreachableError("link down")
    for n in range(3):
        (state / "note").write_text(f"v{n}")
        cp.last["i1"] = 0.0  # due now
        asyncio.run(cp.once())
    assert sorted(p.name for p in (tmp_path / "spool").iterdir()) == ["i1.ckpt", "i1.json"]
    assert _phases(store) == ["taken", "taken", "taken"]

    controller.fail = None
    asyncio.run(cp.once())  # not due: just the upload of the newest
    ((cid, body, params),) = controller.got
    assert params["epoch"] == 3 and params["kind"] == "process" and params["instance"] == "i1"
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        member = tar.extractfile("main/note")
        assert member is not None and member.read() == b"v2"
    assert list((tmp_path / "spool").iterdir()) == []
    assert _phases(store)[-1] == "sent"
    assert len(cid) == 32  # the site's own id: a retry stores nothing twice

    # Refused (the instance moved on: a stale epoch): dropped, said so.
    controller.fail = SyncError("controller answered 409: stale")
    cp.last["i1"] = 0.0
    asyncio.run(cp.once())
    assert list((tmp_path / "spool").iterdir()) == []
    assert _phases(store)[-2:] == ["taken", "refused"]


def test_only_running_instances_at_their_epoch_are_checkpointed(
    store: Store, tmp_path: Path
) -> None:
    _running(store, tmp_path)
    row = actual.get(store, "i1")
    assert row is not None
    actual.transition(store, row, ActualState.STOPPED)
    controller = _Controller()
    cp = Checkpointer(
        store, tmp_path / "state", tmp_path / "spool", DriverSet(FakeDriver()), None,
        controller,  # type: ignore[arg-type]
    )  # fmt: skip
    cp.last["i1"] = 0.0
    asyncio.run(cp.once())
    assert controller.got == [] and _phases(store) == []
