"""An S3-compatible server for the test session, and the two blob backends to run on.

The server is moto's standalone one (``moto[server]``), run as a real process on a
loopback port: no S3-compatible server of production grade (MinIO, Garage,
SeaweedFS, versitygw, s3proxy) is packaged for this machine's registries, and
Debian's radosgw needs a whole Ceph cluster (see docs/operator-guide.md).
"""

from __future__ import annotations

import itertools
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx

from cloudlet.testbed.local import Proc, free_port, wait_for

#: moto accepts any credentials; these are passed explicitly, never read from ~/.aws.
ACCESS_KEY, SECRET_KEY, REGION = "cloudlet-test", "cloudlet-test-secret", "us-east-1"
_buckets = itertools.count()


@dataclass
class S3Server:
    url: str

    def client(self) -> Any:
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        )

    def new_bucket(self) -> str:
        name = f"cloudlet-test-{next(_buckets)}"
        self.client().create_bucket(Bucket=name)
        return name


@contextmanager
def s3_server() -> Iterator[S3Server]:
    """Start moto's server on a free loopback port; stop it at the end."""
    root = Path(tempfile.mkdtemp(prefix="cloudlet-s3-"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CLOUDLET_"))}
    args = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    proc = Proc("moto", args, root / "moto.log", env).start()
    server = S3Server(f"http://127.0.0.1:{port}")
    try:
        wait_for(
            lambda: proc.alive and httpx.get(server.url, timeout=2).status_code < 500,
            30,
            f"moto's S3 server on {server.url}\n{proc.log_tail()}",
        )
        yield server
    finally:
        proc.stop()


@dataclass
class BlobBackend:
    """What a test controller is configured with, and a look at what it stored."""

    name: str
    s3: S3Server | None = None
    bucket: str | None = None
    prefix: str = "blobs/"

    def env(self) -> dict[str, str]:
        """The controller's environment for this backend."""
        if self.s3 is None:
            return {}
        assert self.bucket is not None
        blobs = {
            "BACKEND": "s3",
            "BUCKET": self.bucket,
            "PREFIX": self.prefix,
            "ENDPOINT_URL": self.s3.url,
            "REGION": REGION,
            "ACCESS_KEY_ID": ACCESS_KEY,
            "SECRET_ACCESS_KEY": SECRET_KEY,
            "ADDRESSING_STYLE": "path",
            "MULTIPART_THRESHOLD_MIB": "5",
            "MULTIPART_CHUNK_MIB": "5",
        }
        return {f"CLOUDLET_CONTROLLER__BLOBS__{k}": v for k, v in blobs.items()}

    def keys(self, data_dir: Path) -> list[str]:
        """The keys of the blobs published, sorted."""
        if self.s3 is None:
            root = data_dir / "artifacts"
            return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
        listed = self.s3.client().list_objects_v2(Bucket=self.bucket, Prefix=self.prefix)
        return sorted(o["Key"].removeprefix(self.prefix) for o in listed.get("Contents", []))

    def read(self, data_dir: Path, key: str) -> bytes:
        if self.s3 is None:
            return (data_dir / "artifacts" / key).read_bytes()
        answer = self.s3.client().get_object(Bucket=self.bucket, Key=self.prefix + key)
        return bytes(answer["Body"].read())
