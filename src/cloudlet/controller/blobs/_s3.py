"""Blobs as objects in an S3-compatible bucket (AWS S3, MinIO, Ceph RGW, Garage, ...)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from cloudlet.controller.blobs._base import READ_CHUNK, BlobStream
from cloudlet.errors import BlobStoreError, ConfigError, NotFoundError
from cloudlet.settings import BlobSettings

log = logging.getLogger(__name__)
MiB = 1 << 20
_MISSING = {"404", "NoSuchKey", "NotFound"}


class S3BlobStore:
    """Blobs under ``prefix + key`` in one bucket.

    Large blobs go up as multipart uploads (parts put in parallel; an object appears
    only once the upload completes, and a failed one is aborted), reads are ranged
    GETs streamed as they arrive.
    """

    def __init__(self, client: Any, bucket: str, prefix: str = "", transfer: Any = None) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.transfer = transfer or TransferConfig()

    @classmethod
    def from_settings(cls, settings: BlobSettings) -> S3BlobStore:
        assert settings.bucket is not None  # BlobSettings checks it for the s3 backend
        secret = settings.secret_access_key
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=settings.endpoint_url,
            region_name=settings.region or "us-east-1",
            aws_access_key_id=settings.access_key_id,
            aws_secret_access_key=secret.get_secret_value() if secret else None,
            config=Config(
                s3={"addressing_style": settings.addressing_style},
                retries={"max_attempts": 5, "mode": "standard"},
                max_pool_connections=64,
            ),
        )
        transfer = TransferConfig(
            multipart_threshold=settings.multipart_threshold_mib * MiB,
            multipart_chunksize=settings.multipart_chunk_mib * MiB,
            max_concurrency=4,
        )
        return cls(client, settings.bucket, settings.prefix, transfer)

    def __repr__(self) -> str:
        return f"S3BlobStore(bucket={self.bucket!r}, prefix={self.prefix!r})"

    def check(self) -> None:
        """Fail fast on a bucket that is missing or refused; an unreachable server is
        only logged (a replica should start while the object store is down).

        Raises:
            ConfigError: the bucket does not exist, or these credentials may not use it.
        """
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "?")
            raise ConfigError(f"S3 bucket {self.bucket!r} is not usable ({code}): {exc}") from exc
        except BotoCoreError as exc:
            log.warning("S3 bucket %r unreachable at start: %s", self.bucket, exc)

    def put(self, key: str, path: Path) -> None:
        if not path.is_file():
            raise FileNotFoundError(path)
        try:
            self.client.upload_file(str(path), self.bucket, self.prefix + key, Config=self.transfer)
        except (BotoCoreError, ClientError) as exc:
            raise BlobStoreError(f"cannot put {key} to S3 bucket {self.bucket!r}: {exc}") from exc

    def open_range(self, key: str, start: int, end: int) -> BlobStream:
        if end <= start:
            return _empty()
        try:
            answer = self.client.get_object(
                Bucket=self.bucket, Key=self.prefix + key, Range=f"bytes={start}-{end - 1}"
            )
        except ClientError as exc:
            if _missing(exc):
                raise NotFoundError(f"blob {key} is missing from bucket {self.bucket!r}") from None
            raise BlobStoreError(f"cannot get {key} from S3: {exc}") from exc
        except BotoCoreError as exc:
            raise BlobStoreError(f"cannot get {key} from S3: {exc}") from exc
        return _stream(answer["Body"], key, end - start)

    def size(self, key: str) -> int | None:
        try:
            answer = self.client.head_object(Bucket=self.bucket, Key=self.prefix + key)
        except ClientError as exc:
            if _missing(exc):
                return None
            raise BlobStoreError(f"cannot stat {key} in S3: {exc}") from exc
        except BotoCoreError as exc:
            raise BlobStoreError(f"cannot stat {key} in S3: {exc}") from exc
        return int(answer["ContentLength"])

    def exists(self, key: str) -> bool:
        return self.size(key) is not None

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.prefix + key)
        except (BotoCoreError, ClientError) as exc:
            raise BlobStoreError(f"cannot delete {key} from S3: {exc}") from exc


def _missing(exc: ClientError) -> bool:
    return str(exc.response.get("Error", {}).get("Code")) in _MISSING


def _empty() -> BlobStream:
    yield from ()


def _stream(body: Any, key: str, length: int) -> BlobStream:
    got = 0
    try:
        for chunk in body.iter_chunks(READ_CHUNK):
            got += len(chunk)
            yield chunk
    except BotoCoreError as exc:
        raise BlobStoreError(f"reading {key} from S3 failed after {got} bytes: {exc}") from exc
    finally:
        body.close()
    if got != length:
        raise BlobStoreError(f"S3 sent {got} bytes of {key}, not {length}")
