"""Images and overlays against a real controller process, on SQLite and PostgreSQL
and on both blob backends (files, S3): resumable uploads, digest checks, range
reads, pre-staging and the CLI."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import blake3
import httpx
import pytest

from cloudlet.cli._upload import resume_key
from cloudlet.controller.db.engine import default_url, make_engine, make_sessionmaker
from cloudlet.controller.db.models import Site
from cloudlet.controller.services.site_images import record_cache
from cloudlet.schemas.artifacts import ArtifactKind, CachedImage
from cloudlet.synthesis import create_overlay
from cloudlet.synthesis.format import HEADER_SIZE
from cloudlet.testbed.local import LocalController, wait_for
from s3 import BlobBackend

pytestmark = pytest.mark.integration
both_backends = pytest.mark.parametrize("blobs", ["filesystem", "s3"], indirect=True)

MiB = 1 << 20
PROBLEM = "application/problem+json"


@pytest.fixture
def images(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A 4 MiB base (random + zeros), a modified copy, and the overlay between them."""
    rng = os.urandom
    base = tmp_path / "base.raw"
    base.write_bytes(rng(2 * MiB) + bytes(2 * MiB))
    data = bytearray(base.read_bytes())
    data[MiB : MiB + 256 * 1024] = rng(256 * 1024)
    data[3 * MiB : 3 * MiB + 64 * 1024] = rng(64 * 1024)
    modified = tmp_path / "modified.raw"
    modified.write_bytes(bytes(data))
    overlay = tmp_path / "app.overlay"
    create_overlay(base, modified, overlay, level=1)
    return base, modified, overlay


def _problem(response: httpx.Response, status: int, slug: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["type"].endswith("/" + slug), body
    return str(body["detail"])


def _upload(
    api: httpx.Client, kind: str, name: str, data: bytes, chunk: int = MiB, **extra: Any
) -> httpx.Response:
    """Upload in chunks of `chunk` bytes; returns the answer to complete."""
    created = api.post("/v1/uploads", json={"kind": kind, "name": name, "size": len(data), **extra})
    assert created.status_code == 201, created.text
    uid = created.json()["id"]
    for offset in range(0, len(data), chunk):
        put = api.put(
            f"/v1/uploads/{uid}", params={"offset": offset}, content=data[offset:][:chunk]
        )
        assert put.status_code == 200, put.text
        assert put.json()["received"] == min(len(data), offset + chunk)
    return api.post(f"/v1/uploads/{uid}/complete")


def _cut_short(ctl: LocalController, uid: str, offset: int, declared: int, sent: bytes) -> None:
    """PUT a chunk announcing `declared` bytes, send only `sent`, then hang up."""
    with socket.create_connection(("127.0.0.1", ctl.port)) as sock:
        head = (
            f"PUT /v1/uploads/{uid}?offset={offset} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {ctl.token}\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {declared}\r\n\r\n"
        )
        sock.sendall(head.encode() + sent)
        time.sleep(1.0)  # let the controller take in what was sent before the hang-up


def _report_cache(
    ctl: LocalController, database_url: str | None, site: str, cache: list[CachedImage]
) -> None:
    """Store a cache report as the sync path does, straight into the controller's database."""
    engine = make_engine(database_url or default_url(ctl.data_dir))
    try:
        with make_sessionmaker(engine).begin() as session:
            record_cache(session, session.query(Site).filter_by(name=site).one(), cache)
    finally:
        engine.dispose()


def _files(ctl: LocalController, blobs: BlobBackend) -> list[str]:
    """Uploads in progress and published blobs: nothing else may be left behind."""
    uploads = ctl.data_dir / "uploads"
    return sorted(
        [f"uploads/{p.name}" for p in uploads.glob("*") if p.is_file()]
        + [f"artifacts/{key}" for key in blobs.keys(ctl.data_dir)]
    )


@both_backends
def test_chunked_upload_resumes_is_checked_and_served_by_range(
    api: httpx.Client, controller: LocalController, blobs: BlobBackend
) -> None:
    data = os.urandom(3 * MiB) + bytes(MiB) + os.urandom(12345)
    digest = blake3.blake3(data).hexdigest()
    created = api.post("/v1/uploads", json={"kind": "image", "name": "base", "size": len(data)})
    uid = created.json()["id"]
    put = api.put(f"/v1/uploads/{uid}", params={"offset": 0}, content=data[:MiB])
    assert put.json()["received"] == MiB

    # A chunk cut short by the client: what arrived counts; resume from `received`.
    _cut_short(controller, uid, MiB, 2 * MiB, data[MiB : MiB + 700_000])
    received = wait_for(
        lambda: (n := api.get(f"/v1/uploads/{uid}").json()["received"]) > MiB and n,
        10,
        "the cut-short chunk to be counted",
    )
    assert MiB < received <= MiB + 700_000

    # A gap is refused with the offset to resume from; a re-sent range is accepted.
    gap = api.put(f"/v1/uploads/{uid}", params={"offset": received + 10}, content=b"x")
    assert f"offset={received}" in _problem(gap, 409, "conflict")
    again = api.put(f"/v1/uploads/{uid}", params={"offset": 0}, content=data[:1000])
    assert again.status_code == 200 and again.json()["received"] == received
    too_long = api.put(
        f"/v1/uploads/{uid}", params={"offset": received}, content=data[received:] + b"!"
    )
    _problem(too_long, 409, "conflict")
    early = api.post(f"/v1/uploads/{uid}/complete")
    _problem(early, 409, "conflict")

    rest = api.put(f"/v1/uploads/{uid}", params={"offset": received}, content=data[received:])
    assert rest.json()["received"] == len(data)
    done = api.post(f"/v1/uploads/{uid}/complete")
    assert done.status_code == 201, done.text
    assert done.json()["digest"] == digest and done.json()["size"] == len(data)
    assert blobs.read(controller.data_dir, f"images/{digest}") == data
    assert _problem(api.get(f"/v1/uploads/{uid}"), 404, "not-found")

    # Same bytes again: the existing image (200), by digest, name or prefix.
    assert _upload(api, "image", "base", data, chunk=2 * MiB, digest=digest).status_code == 200
    for ref in (digest, "base", digest[:12]):
        assert api.get(f"/v1/images/{ref}").json()["digest"] == digest
    assert [i["digest"] for i in api.get("/v1/images").json()] == [digest]
    taken = api.post("/v1/uploads", json={"kind": "image", "name": "base", "size": 10})
    _problem(taken, 409, "conflict")
    assert _files(controller, blobs) == [f"artifacts/images/{digest}"]

    # A wrong expected digest: 422, nothing registered, no file left behind.
    other = os.urandom(MiB)
    bad = _upload(api, "image", "other", other, digest="0" * 64)
    assert "digest mismatch" in _problem(bad, 422, "digest-mismatch")
    assert _problem(api.get("/v1/images/other"), 404, "not-found")
    assert _files(controller, blobs) == [f"artifacts/images/{digest}"]
    assert api.get("/v1/uploads").json() == []

    # Aborting removes the upload and its file.
    aborted = api.post("/v1/uploads", json={"kind": "image", "name": "gone", "size": 10}).json()
    api.put(f"/v1/uploads/{aborted['id']}", params={"offset": 0}, content=b"12345")
    assert api.delete(f"/v1/uploads/{aborted['id']}").status_code == 204
    assert _files(controller, blobs) == [f"artifacts/images/{digest}"]

    # Range reads, by an admin token or by a site credential.
    url = f"/v1/images/{digest}/blob"
    whole = api.get(url)
    assert whole.status_code == 200 and whole.content == data
    part = api.get(url, headers={"Range": "bytes=1000-1999"})
    assert part.status_code == 206 and part.content == data[1000:2000]
    assert part.headers["content-range"] == f"bytes 1000-1999/{len(data)}"
    tail = api.get(url, headers={"Range": f"bytes={MiB}-"})
    assert tail.status_code == 206 and tail.content == data[MiB:]
    assert tail.headers["content-range"] == f"bytes {MiB}-{len(data) - 1}/{len(data)}"
    beyond = api.get(url, headers={"Range": f"bytes={len(data)}-"})
    assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{len(data)}"
    head = api.head(url)
    assert head.status_code == 200 and int(head.headers["content-length"]) == len(data)
    assert head.headers["etag"] == f'"{digest}"' and head.headers["accept-ranges"] == "bytes"
    suffix = api.get(url, headers={"Range": "bytes=-100"})
    assert suffix.status_code == 206 and suffix.content == data[-100:]
    # If-Range: the range only while the ETag (the digest) still matches.
    same = api.get(url, headers={"Range": "bytes=5-9", "If-Range": f'"{digest}"'})
    assert same.status_code == 206 and same.content == data[5:10]
    changed = api.get(url, headers={"Range": "bytes=5-9", "If-Range": '"other"'})
    assert changed.status_code == 200 and changed.content == data
    # Several ranges, or another unit: the server may ignore Range, and does.
    several = api.get(url, headers={"Range": "bytes=0-1,5-6"})
    assert several.status_code == 200 and len(several.content) == len(data)

    created = api.post("/v1/sites", json={"name": "lyon"}).json()
    enrolled = httpx.post(
        f"{controller.url}/v1/agent/enroll", json={"join_token": created["join_token"]["token"]}
    )
    credential = enrolled.json()["credential"]
    as_site = httpx.get(
        controller.url + url,
        headers={"Authorization": f"Bearer {credential}", "Range": "bytes=0-9"},
    )
    assert as_site.status_code == 206 and as_site.content == data[:10]
    _problem(httpx.get(controller.url + url), 401, "auth")
    wrong = httpx.get(controller.url + url, headers={"Authorization": "Bearer nope"})
    _problem(wrong, 401, "auth")
    # A site credential reads blobs, nothing else.
    _problem(httpx.get(f"{controller.url}/v1/images", headers=wrong.request.headers), 401, "auth")
    _problem(api.get(f"/v1/images/{'f' * 64}/blob"), 404, "not-found")


@both_backends
def test_overlay_needs_its_base_and_must_verify_then_prestage(
    api: httpx.Client,
    controller: LocalController,
    images: tuple[Path, Path, Path],
    database_url: str | None,
    blobs: BlobBackend,
) -> None:
    base, _modified, overlay = images
    ovl = overlay.read_bytes()
    early = api.post("/v1/uploads", json={"kind": "overlay", "name": "app", "size": len(ovl)})
    uid = early.json()["id"]
    api.put(f"/v1/uploads/{uid}", params={"offset": 0}, content=ovl)
    missing = api.post(f"/v1/uploads/{uid}/complete")
    assert "upload the base first" in _problem(missing, 404, "not-found")

    image = _upload(api, "image", "base", base.read_bytes())
    assert image.status_code == 201, image.text
    done = api.post(f"/v1/uploads/{uid}/complete")  # the upload was kept for this retry
    assert done.status_code == 201, done.text
    body = done.json()
    assert body["base"] == image.json()["digest"] and body["size"] == len(ovl)
    assert body["disk_size"] == base.stat().st_size and body["memory_size"] is None
    assert api.get(f"/v1/overlays/{body['id']}").json() == body
    assert [o["id"] for o in api.get("/v1/overlays").json()] == [body["id"]]

    not_overlay = _upload(api, "overlay", "junk", os.urandom(64 * 1024))
    assert "not a valid overlay" in _problem(not_overlay, 422, "invalid-input")
    corrupt = bytearray(ovl)
    corrupt[HEADER_SIZE + 100] ^= 0xFF
    _problem(_upload(api, "overlay", "corrupt", bytes(corrupt)), 422, "digest-mismatch")
    assert api.get("/v1/uploads").json() == []

    in_use = api.delete(f"/v1/images/{image.json()['digest']}")
    assert "overlay" in _problem(in_use, 409, "conflict")
    assert sorted(_files(controller, blobs)) == sorted(
        [f"artifacts/images/{image.json()['digest']}", f"artifacts/overlays/{body['id']}"]
    )
    assert api.delete(f"/v1/overlays/{body['id']}").status_code == 204
    assert api.delete("/v1/images/base").status_code == 204
    assert _files(controller, blobs) == [] and api.get("/v1/images").json() == []

    # Pre-staging a second image at a site, and the site's cache report.
    data = os.urandom(MiB)
    digest = _upload(api, "image", "prestaged", data).json()["digest"]
    api.post("/v1/sites", json={"name": "lyon"})
    before = api.get("/v1/sites/lyon").json()["revision"]
    staged = api.post("/v1/sites/lyon/images", json={"image": "prestaged"})
    assert staged.status_code == 202, staged.text
    entry = staged.json()
    assert entry["digest"] == digest and entry["staged"] and not entry["cached"]
    assert entry["reported_at"] is None and entry["fetched"] == 0
    assert api.get("/v1/sites/lyon").json()["revision"] == before + 1
    again = api.post("/v1/sites/lyon/images", json={"image": digest})  # no change, no bump
    assert again.status_code == 202
    assert api.get("/v1/sites/lyon").json()["revision"] == before + 1
    _problem(api.post("/v1/sites/lyon/images", json={"image": "nope"}), 404, "not-found")
    _problem(api.post("/v1/sites/nowhere/images", json={"image": "prestaged"}), 404, "not-found")

    # What record_cache() stores (the sync path calls it) shows as fetch progress.
    half = CachedImage(
        digest=digest, kind=ArtifactKind.IMAGE, size=MiB, complete=False, fetched=MiB // 2
    )
    extra = CachedImage(digest="a" * 64, kind=ArtifactKind.OVERLAY, size=5, complete=True)
    _report_cache(controller, database_url, "lyon", [half, extra])
    listed = {e["digest"]: e for e in api.get("/v1/sites/lyon/images").json()}
    assert listed[digest]["cached"] and listed[digest]["fetched"] == MiB // 2
    assert not listed[digest]["complete"] and listed[digest]["reported_at"]
    assert listed["a" * 64]["kind"] == "overlay" and not listed["a" * 64]["staged"]

    assert api.delete(f"/v1/sites/lyon/images/{digest[:12]}").status_code == 204
    assert api.get("/v1/sites/lyon").json()["revision"] == before + 2
    assert api.post("/v1/sites/lyon/images", json={"image": digest}).status_code == 202
    assert api.get("/v1/sites/lyon").json()["revision"] == before + 3

    deleted = api.delete(f"/v1/images/{digest}")
    assert deleted.status_code == 204  # staged images are dropped from sites, with a bump
    assert api.get("/v1/sites/lyon").json()["revision"] == before + 4
    after = {e["digest"]: e for e in api.get("/v1/sites/lyon/images").json()}
    assert not after[digest]["staged"] and after[digest]["cached"]  # until the agent evicts it
    _problem(api.delete(f"/v1/sites/lyon/images/{digest}"), 404, "not-found")


def _environ(ctl: LocalController, tmp: Path) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDLET_")}
    return environ | {
        "CLOUDLET_URL": ctl.url,
        "CLOUDLET_TOKEN_FILE": str(ctl.data_dir / "admin.token"),
        "XDG_CACHE_HOME": str(tmp / "cache"),
        "COLUMNS": "200",
    }


def _argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "cloudlet.cli", *args]


def _cli(ctl: LocalController, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _argv(*args), capture_output=True, text=True, env=_environ(ctl, tmp), timeout=60
    )


def test_cli_upload_list_and_prestage(
    api: httpx.Client,
    controller: LocalController,
    images: tuple[Path, Path, Path],
    tmp_path: Path,
    database_url: str | None,
) -> None:
    base, _modified, overlay = images
    digest = blake3.blake3(base.read_bytes()).hexdigest()
    # An interrupted upload (its id kept in the state file) is resumed, not restarted.
    size = base.stat().st_size
    begun = api.post("/v1/uploads", json={"kind": "image", "name": "base", "size": size}).json()
    api.put(f"/v1/uploads/{begun['id']}", params={"offset": 0}, content=base.read_bytes()[:MiB])
    state = tmp_path / "cache" / "cloudlet" / "uploads.json"
    state.parent.mkdir(parents=True)
    state.write_text(json.dumps({resume_key(controller.url, base, "image", "base"): begun["id"]}))
    done = _cli(controller, tmp_path, "image", "upload", str(base), "--name", "base",
                "--chunk-size", "1")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "resumed at 1.0 MiB" in done.stderr and digest in done.stderr
    assert json.loads(state.read_text()) == {}
    listed = _cli(controller, tmp_path, "image", "list", "--json")
    assert [i["name"] for i in json.loads(listed.stdout)] == ["base"]

    up = _cli(controller, tmp_path, "overlay", "upload", str(overlay), "--name", "app", "--json")
    assert up.returncode == 0, up.stderr
    assert json.loads(up.stdout)["base"] == digest
    made = _cli(controller, tmp_path, "app", "create", "vm-app", "--vm-overlay", "app",
                "--guest-port", "80", "--json")  # fmt: skip
    assert made.returncode == 0, made.stderr
    [vm] = json.loads(made.stdout)["components"]
    assert (vm["kind"], vm["image"], vm["overlay"], vm["guest_port"]) == (
        "vm", digest, json.loads(up.stdout)["id"], 80,
    )  # fmt: skip
    api.delete("/v1/apps/vm-app").raise_for_status()

    api.post("/v1/sites", json={"name": "lyon"})
    waited = _cli(controller, tmp_path, "image", "prestage", "--site", "lyon", "base",
                  "--timeout", "1")  # fmt: skip
    assert waited.returncode == 1
    assert "waiting for site lyon's agent" in waited.stderr and "timed out" in waited.stderr

    # It follows the agent's reports until the image is complete at the site.
    follow = subprocess.Popen(
        _argv("image", "prestage", "--site", "lyon", digest[:12], "--json"),
        env=_environ(controller, tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(0.5)
        _report_cache(controller, database_url, "lyon", [
            CachedImage(digest=digest, kind=ArtifactKind.IMAGE, size=size, complete=True),
        ])  # fmt: skip
        out, err = follow.communicate(timeout=30)
    finally:
        follow.kill()
    assert follow.returncode == 0, err
    assert json.loads(out)["complete"] and json.loads(out)["fetched"] == size
    at_site = json.loads(_cli(controller, tmp_path, "image", "list", "-s", "lyon", "--json").stdout)
    assert [(e["name"], e["staged"], e["complete"]) for e in at_site] == [("base", True, True)]


def test_a_resumable_overlay_needs_its_memory_base_registered_and_keeps_it(
    api: httpx.Client, images: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    base, modified, _ = images
    memory_base = tmp_path / "base.ram"
    memory_base.write_bytes(os.urandom(MiB) + bytes(MiB))
    ram = bytearray(memory_base.read_bytes())
    ram[:4096] = os.urandom(4096)
    memory = tmp_path / "app.ram"
    memory.write_bytes(bytes(ram))
    (tmp_path / "vmstate").write_bytes(b"QEVM" + os.urandom(1000))
    overlay = tmp_path / "resumable.overlay"
    create_overlay(
        base, modified, overlay, memory=memory, memory_base=memory_base,
        device_state=tmp_path / "vmstate", level=1,
    )  # fmt: skip
    assert _upload(api, "image", "base", base.read_bytes()).status_code == 201
    early = _upload(api, "overlay", "app", overlay.read_bytes())
    assert "memory base" in _problem(early, 404, "not-found")

    ram_image = _upload(api, "image", "base-ram", memory_base.read_bytes())
    assert ram_image.status_code == 201, ram_image.text
    uid = api.get("/v1/uploads").json()[0]["id"]
    done = api.post(f"/v1/uploads/{uid}/complete")
    assert done.status_code == 201, done.text
    body = done.json()
    assert body["resumable"] is True and body["memory_base"] == ram_image.json()["digest"]
    assert body["memory_size"] == 2 * MiB
    in_use = api.delete("/v1/images/base-ram")
    assert "base of 1 overlay" in _problem(in_use, 409, "conflict")
    vm = {"kind": "vm", "image": body["base"], "overlay": body["id"], "guest_port": 80}
    app = {"name": "resumed", "components": [vm], "resources": {"memory_mib": 64}}
    wrong = api.post("/v1/apps", json=app)
    assert "set the app's memory (resources.memory_mib) to 2" in _problem(
        wrong, 422, "invalid-input"
    )
    app["resources"] = {"memory_mib": 2}
    assert api.post("/v1/apps", json=app).status_code == 201
    assert api.delete("/v1/apps/resumed").status_code == 204
    assert api.delete(f"/v1/overlays/{body['id']}").status_code == 204
    assert api.delete("/v1/images/base-ram").status_code == 204


@both_backends
def test_an_agent_package_is_stored_and_served_by_range(
    api: httpx.Client, controller: LocalController, blobs: BlobBackend, tmp_path: Path
) -> None:
    wheel = tmp_path / "cloudlet-9.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("cloudlet-9.1.0.dist-info/METADATA", "Name: cloudlet\nVersion: 9.1.0\n")
        zf.writestr("cloudlet/filler.bin", os.urandom(200_000))
    data = wheel.read_bytes()
    added = api.post(
        "/v1/agent-packages", params={"filename": wheel.name}, content=data,
        headers={"content-type": "application/octet-stream"},
    )  # fmt: skip
    assert added.status_code == 201, added.text
    assert _files(controller, blobs) == ["artifacts/agent-packages/9.1.0.whl"]
    assert blobs.read(controller.data_dir, "agent-packages/9.1.0.whl") == data
    url = "/v1/agent-packages/9.1.0/blob"
    assert api.get(url).content == data
    part = api.get(url, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == data[100:200]
    assert part.headers["etag"] == f'"{added.json()["digest"]}"'
    assert api.get(url, headers={"Range": f"bytes={len(data)}-"}).status_code == 416
