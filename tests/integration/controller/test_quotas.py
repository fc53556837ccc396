"""Project quotas against a real controller process, on SQLite and PostgreSQL: who may
read and set them, the 403 quota-exceeded each creation gets when there is no room,
and no overshoot when many creations race for the last units (on PostgreSQL across
two controller replicas)."""

from __future__ import annotations

import sqlite3
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from cloudlet.testbed.local import LocalController
from postgres import create_database

pytestmark = pytest.mark.integration

GIB = 1024**3
QUOTA_TYPE = "https://cloudlet.dev/problems/quota-exceeded"


def _app(name: str = "web", vcpus: float = 0.5, memory_mib: int = 64) -> dict[str, Any]:
    return {
        "name": name,
        "components": [{"name": "main", "command": [sys.executable, "-c", "pass"]}],
        "resources": {"vcpus": vcpus, "memory_mib": memory_mib, "disk_gib": 0.01},
    }


def _quota_refusal(r: httpx.Response, quota: str) -> dict[str, Any]:
    assert r.status_code == 403, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["type"].endswith("/quota-exceeded") and body["quota"] == quota, body
    return body


@pytest.fixture
def fire(controller: LocalController) -> Iterator[httpx.Client]:
    """A member of project fire, with an app and a site to run it at."""
    token = controller.create_token("fire-ops", project="fire", role="member")
    with controller.client() as admin:
        admin.post("/v1/sites", json={"name": "oslo"}).raise_for_status()
    with controller.client(token) as client:
        client.post("/v1/apps", json=_app()).raise_for_status()
        yield client


def test_limits_and_usage_are_shown_to_the_project_and_set_by_admins(
    controller: LocalController, api: httpx.Client, fire: httpx.Client
) -> None:
    shown = fire.get("/v1/projects/fire/quota")
    assert shown.status_code == 200, shown.text
    assert shown.json()["limits"] == dict.fromkeys(shown.json()["limits"])  # all unlimited
    assert shown.json()["usage"]["instances"] == 0 and shown.json()["over"] == []

    set_ = api.put("/v1/projects/fire/quota", json={"instances": 3, "vcpus": 1.5})
    assert set_.status_code == 200, set_.text
    assert set_.json()["limits"]["instances"] == 3 and set_.json()["limits"]["vcpus"] == 1.5
    # An omitted field keeps its value; null makes one unlimited again.
    set_ = api.put("/v1/projects/fire/quota", json={"memory_mib": 1024, "vcpus": None})
    assert set_.json()["limits"] == {
        "instances": 3, "vcpus": None, "memory_mib": 1024,
        "overlay_bytes": None, "image_bytes": None,
    }  # fmt: skip

    # Members and readers: their own project only; writes are the admins'.
    assert fire.put("/v1/projects/fire/quota", json={"instances": 99}).status_code == 403
    assert fire.get("/v1/projects/admin/quota").status_code == 404
    reader = controller.create_token("fire-view", project="fire", role="reader")
    with controller.client(reader) as view:
        assert view.get("/v1/projects/fire/quota").json()["limits"]["instances"] == 3
        assert view.put("/v1/projects/fire/quota", json={"instances": 9}).status_code == 403
    # A project that does not exist, and a limit that makes no sense.
    assert api.get("/v1/projects/nowhere/quota").status_code == 404
    assert api.put("/v1/projects/nowhere/quota", json={"instances": 1}).status_code == 404
    bad = api.put("/v1/projects/fire/quota", json={"instances": -1})
    assert bad.status_code == 422 and bad.json()["type"].endswith("/invalid-input")


def test_instances_past_a_quota_are_refused_naming_the_quota(
    api: httpx.Client, fire: httpx.Client
) -> None:
    api.put("/v1/projects/fire/quota", json={"vcpus": 1.2}).raise_for_status()
    made = [fire.post("/v1/instances", json={"app": "web", "site": "oslo"}) for _ in range(2)]
    assert [r.status_code for r in made] == [201, 201]
    body = _quota_refusal(fire.post("/v1/instances", json={"app": "web", "site": "oslo"}), "vcpus")
    assert body["detail"] == "project fire: quota vcpus 1.2, in use 1, asked 0.5"
    assert (body["limit"], body["used"], body["requested"]) == (1.2, 1, 0.5)

    # The instance count quota; deleting an instance makes room again.
    api.put("/v1/projects/fire/quota", json={"vcpus": None, "instances": 2}).raise_for_status()
    body = _quota_refusal(fire.post("/v1/instances", json={"app": "web"}), "instances")
    assert body["detail"] == "project fire: quota instances 2, in use 2, asked 1"
    fire.delete(f"/v1/instances/{made[0].json()['name']}").raise_for_status()
    assert fire.post("/v1/instances", json={"app": "web", "site": "oslo"}).status_code == 201

    # Memory, and a limit lowered below the usage: nothing deleted, shown as over.
    api.put("/v1/projects/fire/quota", json={"instances": None, "memory_mib": 100})
    quota = fire.get("/v1/projects/fire/quota").json()
    assert quota["usage"] == {
        "instances": 2,
        "vcpus": 1.0,
        "memory_mib": 128,
        "overlay_bytes": 0,
        "image_bytes": 0,
    }
    assert quota["over"] == ["memory_mib"]
    _quota_refusal(fire.post("/v1/instances", json={"app": "web", "site": "oslo"}), "memory_mib")
    live = [i for i in fire.get("/v1/instances").json() if i["desired_state"] != "deleted"]
    assert len(live) == 2  # the refused ones left nothing behind
    # Another project is not limited by fire's quota.
    api.post("/v1/apps", json=_app()).raise_for_status()
    assert api.post("/v1/instances", json={"app": "web", "site": "oslo"}).status_code == 201


def test_a_new_version_asking_more_than_the_quota_leaves_is_refused(
    api: httpx.Client, fire: httpx.Client
) -> None:
    for _ in range(2):
        fire.post("/v1/instances", json={"app": "web", "site": "oslo"}).raise_for_status()
    api.put("/v1/projects/fire/quota", json={"vcpus": 1.5}).raise_for_status()
    components = _app()["components"]
    # Both instances would move to 1 vCPU each: 1 more than the 1 they use now.
    bigger = {"components": components, "resources": {"vcpus": 1, "memory_mib": 64}}
    body = _quota_refusal(fire.post("/v1/apps/web/versions", json=bigger), "vcpus")
    assert body["detail"] == "project fire: quota vcpus 1.5, in use 1, asked 1"
    assert fire.get("/v1/apps/web").json()["version"] == 1  # nothing published
    fits = {"components": components, "resources": {"vcpus": 0.7, "memory_mib": 64}}
    assert fire.post("/v1/apps/web/versions", json=fits).status_code == 201


def test_uploads_reserve_their_size_against_the_bytes_quotas(
    api: httpx.Client, fire: httpx.Client
) -> None:
    api.put("/v1/projects/fire/quota", json={"image_bytes": 3 * GIB, "overlay_bytes": 0})
    first = fire.post("/v1/uploads", json={"kind": "image", "name": "a", "size": 2 * GIB})
    assert first.status_code == 201, first.text
    body = _quota_refusal(
        fire.post("/v1/uploads", json={"kind": "image", "name": "b", "size": 2 * GIB}),
        "image_bytes",
    )
    assert (body["used"], body["requested"]) == (2 * GIB, 2 * GIB)
    _quota_refusal(
        fire.post("/v1/uploads", json={"kind": "overlay", "name": "o", "size": 1}), "overlay_bytes"
    )
    assert fire.get("/v1/projects/fire/quota").json()["usage"]["image_bytes"] == 2 * GIB
    # Aborting an upload gives its reservation back.
    fire.delete(f"/v1/uploads/{first.json()['id']}").raise_for_status()
    second = fire.post("/v1/uploads", json={"kind": "image", "name": "b", "size": 2 * GIB})
    assert second.status_code == 201, second.text


def test_a_completed_upload_counts_its_registered_bytes(
    api: httpx.Client, fire: httpx.Client, tmp_path: Path
) -> None:
    data = b"cloudlet base image\n" * 1000
    api.put("/v1/projects/fire/quota", json={"image_bytes": len(data) + 10})
    up = fire.post("/v1/uploads", json={"kind": "image", "name": "base", "size": len(data)})
    up.raise_for_status()
    upload_id = up.json()["id"]
    put = fire.put(
        f"/v1/uploads/{upload_id}", params={"offset": 0}, content=data,
        headers={"content-type": "application/octet-stream"},
    )  # fmt: skip
    put.raise_for_status()
    assert fire.post(f"/v1/uploads/{upload_id}/complete").status_code == 201
    assert fire.get("/v1/projects/fire/quota").json()["usage"]["image_bytes"] == len(data)
    _quota_refusal(
        fire.post("/v1/uploads", json={"kind": "image", "name": "more", "size": 11}), "image_bytes"
    )


# --- racing for the last units ------------------------------------------------------------

#: Creations fired at once, and the units left for them.
RACERS, ROOM = 16, 5


def _race(clients: list[httpx.Client], call: Callable[[httpx.Client, int], httpx.Response]):
    """``RACERS`` calls from as many threads, released together, spread over ``clients``."""
    barrier = threading.Barrier(RACERS)
    answers: list[httpx.Response | None] = [None] * RACERS

    def run(i: int) -> None:
        barrier.wait()
        answers[i] = call(clients[i % len(clients)], i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(RACERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return answers


def _outcomes(answers: list[httpx.Response | None]) -> Counter[str]:
    seen: Counter[str] = Counter()
    for r in answers:
        assert r is not None
        if r.status_code == 403:
            assert r.json()["type"] == QUOTA_TYPE, r.text
        seen[str(r.status_code)] += 1
    return seen


def _race_both_kinds(ctls: list[LocalController], count: Callable[[str], int]) -> None:
    member = ctls[0].create_token("fire-ops", project="fire", role="member")
    with ctls[0].client() as admin:
        admin.post("/v1/sites", json={"name": "oslo"}).raise_for_status()
        # One instance and one upload exist already: the room is what is left.
        admin.put("/v1/projects/fire/quota", json={"instances": ROOM + 1, "image_bytes": ROOM + 1})
    with ExitStack() as stack:
        clients = [stack.enter_context(c.client(member)) for c in ctls]
        clients[0].post("/v1/apps", json=_app()).raise_for_status()
        body = {"app": "web", "site": "oslo"}
        clients[0].post("/v1/instances", json=body).raise_for_status()
        upload = {"kind": "image", "size": 1}
        clients[0].post("/v1/uploads", json={**upload, "name": "first"}).raise_for_status()

        made = _race(clients, lambda c, i: c.post("/v1/instances", json={**body, "name": f"i{i}"}))
        assert _outcomes(made) == {"201": ROOM, "403": RACERS - ROOM}
        assert count("SELECT count(*) FROM instances WHERE project = 'fire'") == ROOM + 1

        started = _race(
            clients, lambda c, i: c.post("/v1/uploads", json={**upload, "name": f"u{i}"})
        )
        assert _outcomes(started) == {"201": ROOM, "403": RACERS - ROOM}
        assert count("SELECT count(*) FROM uploads WHERE project = 'fire'") == ROOM + 1
        usage = clients[-1].get("/v1/projects/fire/quota").json()["usage"]
        assert (usage["instances"], usage["image_bytes"]) == (ROOM + 1, ROOM + 1)


def test_racing_creations_never_overshoot_on_sqlite(tmp_path: Path) -> None:
    ctl = LocalController(tmp_path / "controller").start()
    try:

        def count(sql: str) -> int:
            with sqlite3.connect(ctl.data_dir / "controller.db") as db:
                return db.execute(sql).fetchone()[0]

        _race_both_kinds([ctl], count)
    finally:
        ctl.stop()


def test_racing_creations_on_two_replicas_never_overshoot_on_postgresql(
    postgres_base_url: str, tmp_path: Path
) -> None:
    url = create_database(postgres_base_url, f"cloudlet_quotas_{tmp_path.name[-20:]}")
    engine = create_engine(url)
    with ExitStack() as stack:
        stack.callback(engine.dispose)
        a = LocalController(tmp_path / "a", database_url=url).start()
        stack.callback(a.stop)
        b = LocalController(tmp_path / "b", database_url=url).start()
        stack.callback(b.stop)

        def count(sql: str) -> int:
            with engine.connect() as conn:
                return conn.execute(text(sql)).scalar_one()

        _race_both_kinds([a, b], count)
