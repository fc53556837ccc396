"""`cloudlet key create` and `cloudlet overlay sign` / `image sign` against a real controller:
the private key stays in a 0600 file, the controller stores only signatures that check out."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from cloudlet.signing import PublisherKey, verify
from cloudlet.synthesis import create_overlay
from cloudlet.testbed.local import LocalController

pytestmark = pytest.mark.integration

MIB = 1 << 20


@pytest.fixture(scope="module")
def controller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalController]:
    ctl = LocalController(tmp_path_factory.mktemp("cli-signing") / "ctl").start()
    try:
        yield ctl
    finally:
        ctl.stop()


def cli(
    controller: LocalController, keys: Path, *args: str, token: str | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDLET_")}
    environ |= {**controller.cli_env(), "CLOUDLET_KEY_DIR": str(keys), "COLUMNS": "200"}
    if token is None:
        environ["CLOUDLET_TOKEN_FILE"] = str(controller.data_dir / "admin.token")
    else:
        environ["CLOUDLET_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "cloudlet.cli", *args],
        capture_output=True,
        text=True,
        env=environ,
        timeout=60,
    )


def ok_json(controller: LocalController, keys: Path, *args: str, **kw: Any) -> Any:
    result = cli(controller, keys, *args, "--json", **kw)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


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


def small_overlay(tmp_path: Path) -> tuple[Path, Path]:
    """A 4 MiB base and an overlay of a copy with a few changed blocks."""
    rng = np.random.default_rng(12)
    base, modified, overlay = tmp_path / "base.img", tmp_path / "mod.img", tmp_path / "app.ovl"
    data = rng.integers(0, 256, 4 * MIB, dtype=np.uint8)
    base.write_bytes(data.tobytes())
    data[MIB : MIB + 64 * 1024] = rng.integers(0, 256, 64 * 1024, dtype=np.uint8)
    modified.write_bytes(data.tobytes())
    create_overlay(base, modified, overlay, threads=1)
    return base, overlay


def test_key_create_then_overlay_and_image_sign(
    controller: LocalController, tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    api = controller.client()
    base, overlay = small_overlay(tmp_path)
    image = upload(api, base, "image", "cli-base")
    ovl = upload(api, overlay, "overlay", "cli-app")

    made = ok_json(controller, keys, "key", "create", "release")
    key_file = keys / "release.key"
    assert made["private_key_file"] == str(key_file) and made["project"] == "admin"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    local = PublisherKey.from_pem(key_file.read_bytes())
    assert (made["kid"], made["public_key"]) == (local.kid, local.x)
    assert "PRIVATE" not in json.dumps(api.get("/v1/publisher-keys").json())
    again = cli(controller, keys, "key", "create", "release")
    assert again.returncode != 0 and "exists already" in again.stderr
    assert len(api.get("/v1/publisher-keys").json()) == 1  # nothing registered for it

    # By name at the controller, and from the local file (its digest computed here).
    signed = ok_json(controller, keys, "overlay", "sign", "cli-app", "--key", "release")
    assert signed["digest"] == ovl["id"] and signed["kid"] == local.kid
    assert verify(local.x, "overlay", ovl["id"], signed["signature"])
    by_file = ok_json(controller, keys, "overlay", "sign", str(overlay), "--key", "release")
    assert by_file["signature"] == signed["signature"]  # Ed25519 is deterministic
    img = ok_json(controller, keys, "image", "sign", image["digest"][:16], "--key", str(key_file))
    assert img["digest"] == image["digest"] and img["kind"] == "image"
    listed = api.get(f"/v1/overlays/{ovl['id']}/signatures").json()
    assert [(s["kid"], s["key_revoked"]) for s in listed] == [(local.kid, False)]

    # A key of another project may not sign this one's artifacts (one clear line, exit 1).
    member = controller.create_token("publisher", "tenant-b", role="member")
    other = ok_json(controller, keys, "key", "create", "b-key", token=member)
    assert other["project"] == "tenant-b"
    refused = cli(controller, keys, "overlay", "sign", ovl["id"], "--key", "b-key")
    assert refused.returncode == 1
    assert "not a publisher key of project 'admin'" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1

    # Revoked: the signature stays, marked; new ones are refused.
    assert ok_json(controller, keys, "key", "revoke", "release")["revoked_at"]
    listed = api.get(f"/v1/overlays/{ovl['id']}/signatures").json()
    assert [s["key_revoked"] for s in listed] == [True]
    late = cli(controller, keys, "image", "sign", image["digest"], "--key", "release")
    assert late.returncode == 1 and "revoked" in late.stderr

    table = cli(controller, keys, "key", "list")
    assert "release" in table.stdout and "b-key" in table.stdout
    policy = ok_json(controller, keys, "key", "policy", "admin", "--require")
    assert policy["require_signatures"] is True
    assert ok_json(controller, keys, "key", "policy", "admin")["require_signatures"] is True
    denied = cli(controller, keys, "key", "policy", "tenant-b", "--no-require", token=member)
    assert denied.returncode == 1 and "admin role" in denied.stderr
    api.close()
