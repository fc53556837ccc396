"""Build the blob store the settings name."""

from __future__ import annotations

from cloudlet.controller.blobs._base import BlobStore
from cloudlet.controller.blobs._filesystem import FilesystemBlobStore
from cloudlet.controller.blobs._s3 import S3BlobStore
from cloudlet.settings import ControllerSettings


def open_blob_store(settings: ControllerSettings) -> BlobStore:
    """The configured backend; an S3 bucket is checked at once.

    Raises:
        ConfigError: the S3 bucket is missing or refused.
    """
    blobs = settings.blobs
    if blobs.backend == "s3":
        store = S3BlobStore.from_settings(blobs)
        store.check()
        return store
    return FilesystemBlobStore(blobs.path or settings.data_dir / "artifacts")
