"""One contract for every blob store backend: the filesystem, and S3 against a real
S3-compatible server process (see tests/s3.py)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudlet.controller.blobs import READ_CHUNK, BlobStore, FilesystemBlobStore, S3BlobStore
from cloudlet.errors import BlobStoreError, ConfigError, NotFoundError
from cloudlet.settings import BlobSettings
from s3 import ACCESS_KEY, REGION, SECRET_KEY, S3Server

pytestmark = pytest.mark.integration
MiB = 1 << 20


def _s3_settings(s3: S3Server, bucket: str, **extra: object) -> BlobSettings:
    return BlobSettings.model_validate(
        {
            "backend": "s3", "bucket": bucket, "prefix": "p/", "endpoint_url": s3.url,
            "region": REGION, "access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY,
            "addressing_style": "path", "multipart_threshold_mib": 5, "multipart_chunk_mib": 5,
            **extra,
        }
    )  # fmt: skip


@pytest.fixture(params=["filesystem", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobStore]:
    if request.param == "filesystem":
        yield FilesystemBlobStore(tmp_path / "artifacts")
        return
    s3: S3Server = request.getfixturevalue("s3")
    blobs = S3BlobStore.from_settings(_s3_settings(s3, s3.new_bucket()))
    blobs.check()
    yield blobs


def _file(tmp_path: Path, data: bytes, name: str = "upload") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _read(store: BlobStore, key: str, start: int, end: int) -> bytes:
    return b"".join(store.open_range(key, start, end))


def test_put_then_read_ranges_size_and_delete(store: BlobStore, tmp_path: Path) -> None:
    data = os.urandom(2 * READ_CHUNK + 12345)
    assert not store.exists("images/a") and store.size("images/a") is None
    store.put("images/a", _file(tmp_path, data))
    assert store.exists("images/a") and store.size("images/a") == len(data)
    assert _read(store, "images/a", 0, len(data)) == data
    assert _read(store, "images/a", 1000, 2000) == data[1000:2000]
    assert _read(store, "images/a", len(data) - 1, len(data)) == data[-1:]
    chunks = list(store.open_range("images/a", 0, len(data)))
    assert max(len(c) for c in chunks) <= READ_CHUNK
    store.delete("images/a")
    store.delete("images/a")  # deleting a missing blob succeeds
    assert not store.exists("images/a")
    with pytest.raises(NotFoundError):
        store.open_range("images/a", 0, 1)


def test_a_stream_closed_early_lets_go(store: BlobStore, tmp_path: Path) -> None:
    data = os.urandom(3 * READ_CHUNK)
    store.put("overlays/o", _file(tmp_path, data))
    for _ in range(40):  # more than a connection pool holds, were they kept
        stream = store.open_range("overlays/o", 0, len(data))
        assert next(stream) == data[:READ_CHUNK]
        stream.close()
    assert _read(store, "overlays/o", 0, 10) == data[:10]


def test_a_missing_source_is_not_stored(store: BlobStore, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        store.put("images/none", tmp_path / "absent")
    assert not store.exists("images/none")


def test_s3_puts_large_blobs_in_parts_under_the_prefix(s3: S3Server, tmp_path: Path) -> None:
    bucket = s3.new_bucket()
    blobs = S3BlobStore.from_settings(_s3_settings(s3, bucket))
    data = os.urandom(12 * MiB)
    blobs.put("images/big", _file(tmp_path, data))
    head = s3.client().head_object(Bucket=bucket, Key="p/images/big")
    assert head["ETag"].strip('"').endswith("-3")  # S3 names a multipart object's parts
    assert _read(blobs, "images/big", 11 * MiB, 12 * MiB) == data[11 * MiB :]


def test_s3_refuses_a_missing_bucket_and_reports_a_dead_server(s3: S3Server) -> None:
    with pytest.raises(ConfigError, match="not usable"):
        S3BlobStore.from_settings(_s3_settings(s3, "no-such-bucket")).check()
    dead = S3BlobStore.from_settings(
        _s3_settings(s3, "b", endpoint_url="http://127.0.0.1:9", region=REGION)
    )
    with pytest.raises(BlobStoreError):
        dead.size("images/a")


def test_filesystem_copies_across_file_systems(tmp_path: Path) -> None:
    """A shared mount for blobs, local disk for uploads: a rename cannot cross, so the
    file is copied in under a temporary name and renamed there."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs a second file system (/dev/shm)")
    data = os.urandom(READ_CHUNK + 1)
    with tempfile.TemporaryDirectory(dir=shm) as other:
        store = FilesystemBlobStore(tmp_path / "artifacts")
        store.put("images/x", _file(Path(other), data))
    assert (tmp_path / "artifacts" / "images" / "x").read_bytes() == data
    assert [p.name for p in (tmp_path / "artifacts" / "images").iterdir()] == ["x"]
