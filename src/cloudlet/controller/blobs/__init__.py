"""Where the controller keeps published artifacts: a filesystem or an S3 bucket.

Uploads in progress stay on local disk (see ``services._store``); a checked upload
is put here whole, under a key such as ``images/<digest>``.
"""

from cloudlet.controller.blobs._base import READ_CHUNK, BlobStore, BlobStream
from cloudlet.controller.blobs._filesystem import FilesystemBlobStore
from cloudlet.controller.blobs._open import open_blob_store
from cloudlet.controller.blobs._s3 import S3BlobStore

__all__ = [
    "READ_CHUNK",
    "BlobStore",
    "BlobStream",
    "FilesystemBlobStore",
    "S3BlobStore",
    "open_blob_store",
]
