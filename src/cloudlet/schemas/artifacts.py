"""Artifacts: content-addressed base images and the overlays built on them.

Bytes travel through resumable uploads (``POST /v1/uploads``, ``PUT
/v1/uploads/{id}?offset=N``, ``POST /v1/uploads/{id}/complete``) and are read
back by HTTP range from ``GET /v1/images/{digest}/blob`` and
``GET /v1/overlays/{id}/blob``, which agents use to pre-stage bases and fetch
the overlay segments they lack.
"""

from __future__ import annotations

import enum
from datetime import datetime

from pydantic import Field

from cloudlet.schemas._base import Input, Model
from cloudlet.schemas.common import Integer, Name, Project

#: blake3 hex digest of a whole file: the id of a base image.
Digest = str


class ArtifactKind(enum.StrEnum):
    IMAGE = "image"
    OVERLAY = "overlay"


class UploadCreate(Input):
    kind: ArtifactKind
    name: Name = Field(description="Human name of the image or overlay.")
    size: Integer = Field(gt=0, description="Total bytes that will be sent.")
    digest: str | None = Field(
        None, pattern=r"^[0-9a-f]{64}$", description="Expected blake3 hex digest, if known."
    )
    project: Project | None = None


class Upload(Model):
    id: str
    kind: ArtifactKind
    name: str
    size: int
    received: int = Field(description="Bytes stored so far: resume from here.")
    created_at: datetime


class Image(Model):
    digest: Digest
    name: str
    project: str
    size: int
    created_at: datetime


class Overlay(Model):
    id: str = Field(description="The overlay's root digest (hex).")
    name: str
    project: str
    base: Digest = Field(description="Digest of the base image it applies to.")
    size: int
    disk_size: int
    memory_size: int | None
    memory_base: Digest | None = Field(
        None, description="Image holding the base VM's RAM the overlay's memory is made against."
    )
    resumable: bool = Field(
        False, description="It carries the VM's device state: sites resume it instead of booting."
    )
    created_at: datetime


class PrestageRequest(Input):
    image: str = Field(min_length=1, max_length=64, description="Image digest or name.")


class CachedImage(Model):
    """One artifact held in a site's cache, as its agent reports it."""

    digest: str = Field(max_length=64)
    kind: ArtifactKind
    size: Integer = Field(ge=0)
    complete: bool = Field(description="False while it is still being fetched.")
    fetched: Integer = Field(0, description="Bytes fetched so far.")
    last_used: datetime | None = None
