"""Artifacts in an S3 bucket serve every controller replica: an image uploaded through
one replica is read by range, and fetched by a site's agent, through another; the
upload's own chunks must reach the replica that assembles it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from cloudlet.controller.db.engine import default_url
from cloudlet.synthesis import base_digest
from cloudlet.testbed.local import LocalAgent, LocalController, wait_for
from s3 import BlobBackend

pytestmark = pytest.mark.integration
MiB = 1 << 20


@pytest.mark.parametrize("blobs", ["s3"], indirect=True)
def test_an_image_uploaded_through_one_replica_reaches_a_site_through_another(
    tmp_path: Path, blobs: BlobBackend
) -> None:
    image = tmp_path / "base.raw"
    with image.open("wb") as f:
        f.write(os.urandom(7 * MiB))
        f.truncate(16 * MiB)  # past the 5 MiB multipart threshold the test server is given
    data = image.read_bytes()
    a = LocalController(tmp_path / "a", env=blobs.env()).start()
    # Replica B shares A's database and bucket, and nothing on disk but the admin token.
    (tmp_path / "b").mkdir()
    shutil.copy(a.data_dir / "admin.token", tmp_path / "b" / "admin.token")
    b = LocalController(
        tmp_path / "b", database_url=default_url(a.data_dir), env=blobs.env()
    ).start()
    agent = None
    try:
        with a.client() as api_a, b.client() as api_b:
            token = api_a.post("/v1/sites", json={"name": "lyon"}).json()["join_token"]["token"]
            body = {"kind": "image", "name": "base", "size": len(data)}
            uid = api_a.post("/v1/uploads", json=body).json()["id"]
            for offset in range(0, len(data), 4 * MiB):
                chunk = data[offset : offset + 4 * MiB]
                put = api_a.put(f"/v1/uploads/{uid}", params={"offset": offset}, content=chunk)
                put.raise_for_status()
                # Uploads are assembled on the replica that started them (no shared
                # uploads dir here): B refuses the upload's chunks, and its completion.
                elsewhere = api_b.put(f"/v1/uploads/{uid}", params={"offset": 0}, content=b"x")
                assert elsewhere.status_code == 409
                assert "another controller replica" in elsewhere.json()["detail"]
            assert api_b.post(f"/v1/uploads/{uid}/complete").status_code == 409
            done = api_a.post(f"/v1/uploads/{uid}/complete")
            assert done.status_code == 201, done.text
            digest = done.json()["digest"]
            assert digest == base_digest(image).hex()
            assert blobs.keys(a.data_dir) == [f"images/{digest}"]
            assert not (a.data_dir / "artifacts").exists()

            url = f"/v1/images/{digest}/blob"
            part = api_b.get(url, headers={"Range": f"bytes={5 * MiB}-{7 * MiB - 1}"})
            assert part.status_code == 206 and part.content == data[5 * MiB : 7 * MiB]
            assert part.headers["content-range"] == f"bytes {5 * MiB}-{7 * MiB - 1}/{len(data)}"
            assert part.headers["etag"] == f'"{digest}"'
            beyond = api_b.get(url, headers={"Range": f"bytes={len(data)}-"})
            assert beyond.status_code == 416

            agent = LocalAgent("lyon", tmp_path / "lyon", b.url, join_token=token).start()
            staged = api_a.post("/v1/sites/lyon/images", json={"image": "base"})
            assert staged.status_code == 202, staged.text

            def complete() -> dict[str, object] | None:
                for entry in api_b.get("/v1/sites/lyon/images").json():
                    if entry["digest"] == digest and entry["complete"]:
                        return entry
                return None

            entry = wait_for(complete, 60, f"the image cached at lyon\n{agent.proc.log_tail()}")
            assert entry["fetched"] == len(data)
            cached = list((tmp_path / "lyon").rglob(digest))
            assert cached and cached[0].read_bytes() == data
            assert not (b.data_dir / "artifacts").exists()

            # Deleting through B removes the object that A put.
            api_a.delete("/v1/sites/lyon/images/base").raise_for_status()
            assert api_b.delete(f"/v1/images/{digest}").status_code == 204
            assert blobs.keys(a.data_dir) == []
    finally:
        if agent is not None:
            agent.stop()
        b.stop()
        a.stop()
