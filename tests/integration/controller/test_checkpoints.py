"""Checkpoints at the controller, on SQLite and PostgreSQL: sites upload them (the
latest two are kept), a failover gives the destination the newest one to start from,
and the stale copy's checkpoints are refused by epoch."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloudlet.testbed.local import LocalController, wait_for

pytestmark = pytest.mark.integration

CAPACITY = {"vcpus": 4, "memory_mib": 4096, "disk_gib": 10}
APP = {
    "name": "notes",
    "components": [{"name": "main", "command": ["python3", "-c", "pass"], "stateful": True}],
    "resources": {"vcpus": 0.1, "memory_mib": 32, "disk_gib": 0.01},
    "relocatable": True,
    "failover_after_s": 1,
    "checkpoint_interval_s": 5,
}


@pytest.fixture
def controller(tmp_path: Path, database_url: str | None) -> Iterator[LocalController]:
    env = {
        "CLOUDLET_CONTROLLER__MOBILITY__INTERVAL_S": "0.3",
        "CLOUDLET_CONTROLLER__MOBILITY__MIN_DWELL_S": "0",
    }
    ctl = LocalController(
        tmp_path / "ctl", database_url=database_url, offline_grace_s=30, env=env, insecure=True
    ).start()  # insecure: the tests play the agents by hand (see conftest)
    try:
        yield ctl
    finally:
        ctl.stop()


def _site(api: httpx.Client, ctl: LocalController, name: str) -> httpx.Client:
    created = api.post("/v1/sites", json={"name": name})
    created.raise_for_status()
    token = created.json()["join_token"]["token"]
    enrolled = httpx.post(f"{ctl.url}/v1/agent/enroll", json={"join_token": token})
    enrolled.raise_for_status()
    agent = httpx.Client(
        base_url=ctl.url, headers={"Authorization": f"Bearer {enrolled.json()['credential']}"}
    )
    _heartbeat(agent)
    return agent


def _heartbeat(agent: httpx.Client) -> None:
    agent.post(
        "/v1/agent/report", json={"applied_revision": 0, "capacity": CAPACITY}
    ).raise_for_status()


def _upload(
    agent: httpx.Client, cid: str, instance: str, epoch: int, body: bytes
) -> httpx.Response:
    params: dict[str, Any] = {
        "instance": instance,
        "epoch": epoch,
        "kind": "process",
        "taken_at": datetime.now(UTC).isoformat(),
    }
    return agent.put(
        f"/v1/agent/checkpoints/{cid}",
        params=params,
        content=body,
        headers={"content-type": "application/octet-stream"},
    )


def _blobs(ctl: LocalController) -> list[Path]:
    root = ctl.data_dir / "artifacts" / "checkpoints"
    return [p for p in root.rglob("*") if p.is_file()]


def test_checkpoints_are_kept_restored_by_failover_and_refused_when_stale(
    controller: LocalController,
) -> None:
    with controller.client() as api:
        lyon = _site(api, controller, "lyon")
        paris = _site(api, controller, "paris")
        bad = api.post("/v1/apps", json={**APP, "name": "bad", "relocatable": False})
        assert bad.status_code == 422 and "relocatable" in bad.text, bad.text
        api.post("/v1/apps", json=APP).raise_for_status()
        created = api.post("/v1/instances", json={"app": "notes", "site": "lyon"})
        assert created.status_code == 201, created.text
        iid = created.json()["id"]

        # Lyon uploads four checkpoints; the latest two are kept, a retry stores nothing.
        for n in range(4):
            answer = _upload(lyon, f"ckpt-{n:04d}", iid, 0, f"state {n}".encode())
            assert answer.status_code == 204, answer.text
            time.sleep(0.01)
        assert _upload(lyon, "ckpt-0003", iid, 0, b"state 3").status_code == 204
        kept = api.get(f"/v1/instances/{iid}/checkpoints").json()
        assert [c["id"] for c in kept] == ["ckpt-0003", "ckpt-0002"]
        assert sorted(p.name for p in _blobs(controller)) == ["ckpt-0002", "ckpt-0003"]
        assert kept[0]["site"] == "lyon" and kept[0]["size"] == 7 and kept[0]["epoch"] == 0
        # Only the instance's own site uploads; only the site it is placed at reads.
        assert _upload(paris, "ckpt-paris", iid, 0, b"x").status_code == 409
        assert paris.get("/v1/agent/checkpoints/ckpt-0003/blob").status_code == 404
        assert lyon.get("/v1/agent/checkpoints/ckpt-0003/blob").content == b"state 3"

        # Lyon goes silent: the instance fails over to paris, from the newest checkpoint.
        def moved() -> dict[str, Any] | None:
            _heartbeat(paris)
            item = api.get(f"/v1/instances/{iid}").json()
            return item if item["site"] == "paris" else None

        item = wait_for(moved, 30, "the failover to paris")
        assert item["epoch"] == 1
        doc = paris.get("/v1/agent/desired", params={"since": 0}).json()
        (entry,) = [e for e in doc["instances"] if e["id"] == iid]
        assert entry["restore"]["id"] == "ckpt-0003" and entry["restore"]["epoch"] == 0
        assert entry["checkpoint_interval_s"] == 5
        assert paris.get("/v1/agent/checkpoints/ckpt-0003/blob").content == b"state 3"
        ranged = paris.get("/v1/agent/checkpoints/ckpt-0003/blob", headers={"range": "bytes=6-"})
        assert ranged.status_code == 206 and ranged.content == b"3"
        events = api.get("/v1/events", params={"kind": "handoff.transferred"}).json()
        (failover,) = [e for e in events if e["data"].get("instance") == iid]
        assert failover["data"]["checkpoint"] == "ckpt-0003"
        assert failover["data"]["checkpoint_age_s"] >= 0

        # The stale copy at lyon (epoch 0) may not overwrite its successor's checkpoints.
        stale = _upload(lyon, "ckpt-stale", iid, 0, b"old")
        assert stale.status_code == 409 and "stale" in stale.json()["detail"], stale.text
        assert _upload(paris, "ckpt-p0001", iid, 1, b"new").status_code == 204
        ids = [c["id"] for c in api.get(f"/v1/instances/{iid}/checkpoints").json()]
        assert ids[0] == "ckpt-p0001" and "ckpt-stale" not in ids

        # A deleted instance fails over no more: its checkpoints go, rows and blobs.
        api.delete(f"/v1/instances/{iid}").raise_for_status()
        assert api.get(f"/v1/instances/{iid}/checkpoints").json() == []
        assert paris.get("/v1/agent/checkpoints/ckpt-p0001/blob").status_code == 404
        assert _upload(paris, "ckpt-p0002", iid, 1, b"late").status_code == 404
        assert _blobs(controller) == []
        lyon.close()
        paris.close()
