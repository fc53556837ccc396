"""Signed artifacts through the whole system: a real controller, a real agent (its VMs on
QEMU), a project whose publisher signs its base and overlays. The site checks every
signature itself, against the digests of the bytes it received, before it synthesizes
anything: with the policy on it refuses the unsigned overlay and the one signed by a
revoked key; with it off it runs the unsigned one and still refuses the revoked key's.
A signature over another digest never gets past the controller."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloudlet.signing import PublisherKey
from cloudlet.synthesis import create_overlay
from cloudlet.testbed.guest import GuestImage, with_page
from cloudlet.testbed.local import LocalAgent, LocalController, wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.qemu,
    pytest.mark.skipif(
        shutil.which("qemu-system-x86_64") is None,
        reason="qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)",
    ),
]

PROJECT = "fire"


def upload(api: httpx.Client, path: Path, kind: str, name: str) -> dict[str, Any]:
    up = api.post("/v1/uploads", json={"kind": kind, "name": name, "size": path.stat().st_size})
    assert up.status_code == 201, up.text
    api.put(
        f"/v1/uploads/{up.json()['id']}",
        params={"offset": 0},
        content=path.read_bytes(),
        headers={"content-type": "application/octet-stream"},
    ).raise_for_status()
    done = api.post(f"/v1/uploads/{up.json()['id']}/complete")
    assert done.status_code == 201, done.text
    return done.json()


def register(api: httpx.Client, name: str) -> PublisherKey:
    key = PublisherKey.generate()
    made = api.post("/v1/publisher-keys", json={"name": name, "public_key": key.x})
    assert made.status_code == 201, made.text
    assert made.json()["kid"] == key.kid and made.json()["project"] == PROJECT
    return key


def sign(api: httpx.Client, key: PublisherKey, noun: str, digest: str) -> httpx.Response:
    kind = noun.removesuffix("s")
    body = {"kid": key.kid, "signature": key.sign(kind, digest)}
    return api.post(f"/v1/{noun}/{digest}/signatures", json=body)


def test_sites_run_only_what_the_policy_and_the_signatures_allow(
    guest: GuestImage, tmp_path: Path
) -> None:
    overlays = {}
    for name in ("signed", "unsigned", "revoked"):
        modified = with_page(guest, tmp_path / f"{name}.img", f"{name} app\n")
        overlays[name] = tmp_path / f"{name}.ovl"
        create_overlay(guest.disk, modified, overlays[name], threads=2)
        modified.unlink()

    ctl = LocalController(tmp_path / "ctl").start()
    admin = ctl.client()
    publisher = ctl.client(ctl.create_token("publisher", PROJECT, role="member"))
    agent = None
    try:
        token = admin.post("/v1/sites", json={"name": "lyon"}).json()["join_token"]["token"]
        agent = LocalAgent(
            "lyon", tmp_path / "lyon", ctl.url, join_token=token,
            env={"CLOUDLET_AGENT__ANNOUNCE": "false"},
        ).start()  # fmt: skip
        image = upload(publisher, guest.disk, "image", "tiny-guest")
        ovl = {n: upload(publisher, p, "overlay", f"{n}-app") for n, p in overlays.items()}
        release, old = register(publisher, "release"), register(publisher, "old")

        # Refused at upload: a signature over another digest (the artifact altered), over
        # the same digest as the other kind, and by a key nobody registered.
        forged = release.sign("overlay", ovl["unsigned"]["id"])  # good, but for another
        for signature in (forged, release.sign("image", ovl["signed"]["id"])):
            body = {"kid": release.kid, "signature": signature}
            answer = publisher.post(f"/v1/overlays/{ovl['signed']['id']}/signatures", json=body)
            assert answer.status_code == 400, answer.text
            assert answer.json()["type"].endswith("/bad-signature")
            assert "does not verify" in answer.json()["detail"]
        assert publisher.get(f"/v1/overlays/{ovl['signed']['id']}/signatures").json() == []
        stranger = PublisherKey.generate()
        answer = sign(publisher, stranger, "overlays", ovl["signed"]["id"])
        assert answer.status_code == 400 and "not a publisher key" in answer.json()["detail"]
        assert sign(publisher, release, "images", image["digest"]).status_code == 201
        assert sign(publisher, release, "overlays", ovl["signed"]["id"]).status_code == 201
        assert sign(publisher, release, "overlays", ovl["signed"]["id"]).status_code == 200
        assert sign(publisher, old, "overlays", ovl["revoked"]["id"]).status_code == 201
        assert publisher.post("/v1/publisher-keys/revocations", json={"kid": old.kid}).json()[
            "revoked_at"
        ]
        late = sign(publisher, old, "overlays", ovl["signed"]["id"])
        assert late.status_code == 400 and "revoked" in late.json()["detail"]

        assert (
            publisher.put(
                f"/v1/projects/{PROJECT}/signing-policy", json={"require_signatures": True}
            ).status_code
            == 403
        )
        policy = admin.put(
            f"/v1/projects/{PROJECT}/signing-policy", json={"require_signatures": True}
        )
        assert policy.status_code == 200 and policy.json()["require_signatures"] is True

        wait_for(lambda: admin.get("/v1/sites/lyon").json()["capacity"], 30, "agent report")
        ids = {}
        for name in ("signed", "unsigned", "revoked"):
            app = {
                "name": f"{name}-app",
                "components": [
                    {
                        "kind": "vm",
                        "image": image["digest"],
                        "overlay": ovl[name]["id"],
                        "guest_port": guest.guest_port,
                        "env": guest.vm_env(),
                    }
                ],
                "resources": {"vcpus": 1, "memory_mib": 128, "disk_gib": 0.1},
            }
            assert publisher.post("/v1/apps", json=app).status_code == 201
            made = publisher.post("/v1/instances", json={"app": f"{name}-app", "site": "lyon"})
            assert made.status_code == 201, made.text
            ids[name] = made.json()["id"]

        def state(name: str) -> dict[str, Any]:
            return publisher.get(f"/v1/instances/{ids[name]}").json()

        def settled(name: str, want: str) -> dict[str, Any] | None:
            item = state(name)
            if want != "failed":
                assert item["actual_state"] != "failed", item
            return item if item["actual_state"] == want else None

        logs = agent.proc.log_tail
        running = wait_for(lambda: settled("signed", "running"), 180, f"signed runs\n{logs()}")
        assert httpx.get(f"http://{running['endpoint']}/", timeout=10).text == "signed app\n"
        unsigned = wait_for(lambda: settled("unsigned", "failed"), 60, "unsigned refused")
        assert f"overlay {ovl['unsigned']['id'][:16]} is not signed" in unsigned["reason"]
        assert f"project '{PROJECT}' requires signatures" in unsigned["reason"]
        revoked = wait_for(lambda: settled("revoked", "failed"), 60, "revoked refused")
        assert "unknown or revoked" in revoked["reason"] and old.kid in revoked["reason"]
        for name in ("unsigned", "revoked"):
            # Nothing synthesized, and an event says why.
            assert not list((tmp_path / "lyon" / "vms" / ids[name]).glob("*.img"))
            events = publisher.get("/v1/events", params={"instance": ids[name]}).json()
            failed = [e for e in events if e["data"].get("state") == "failed"]
            assert failed and failed[-1]["data"]["reason"] == state(name)["reason"]

        # Policy off: the unsigned overlay runs; the revoked key's signature still fails
        # (both entries changed in the same delta; the refusal takes no boot).
        admin.put(f"/v1/projects/{PROJECT}/signing-policy", json={"require_signatures": False})
        wait_for(lambda: settled("unsigned", "running"), 180, f"unsigned runs\n{logs()}")
        item = state("unsigned")
        assert httpx.get(f"http://{item['endpoint']}/", timeout=10).text == "unsigned app\n"
        again = state("revoked")
        assert again["actual_state"] == "failed" and "unknown or revoked" in again["reason"]
    finally:
        if agent is not None:
            agent.stop()
        ctl.stop()
        admin.close()
        publisher.close()
