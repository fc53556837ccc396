"""Project quotas: the limits an admin sets and what the project uses of each."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import Field

from cloudlet.schemas._base import Model, Patch
from cloudlet.schemas.common import JsonNumber

#: The quotas, in the order they are shown.
QUOTAS = ("instances", "vcpus", "memory_mib", "overlay_bytes", "image_bytes")

_COUNT = Annotated[int, Field(ge=0, le=10**9), JsonNumber]
_BYTES = Annotated[int, Field(ge=0, le=2**53), JsonNumber]  # exact as a JSON double too
_CPUS = Annotated[float, Field(ge=0, le=10**9), JsonNumber]
_MIB = Annotated[int, Field(ge=0, le=2**52), JsonNumber]


class QuotaUpdate(Patch):
    """Set some of a project's limits: an omitted one keeps its value, ``null`` makes
    it unlimited, 0 forbids any."""

    nullable: ClassVar[frozenset[str]] = frozenset(QUOTAS)

    instances: _COUNT | None = Field(None, description="Live instances (not deleted).")
    vcpus: _CPUS | None = Field(None, description="vCPUs of the live instances' apps.")
    memory_mib: _MIB | None = Field(None, description="Memory (MiB) of the live instances' apps.")
    overlay_bytes: _BYTES | None = Field(
        None, description="Bytes of registered overlays and overlay uploads in progress."
    )
    image_bytes: _BYTES | None = Field(
        None, description="Bytes of registered images and image uploads in progress."
    )


class QuotaValues(Model):
    """One number per quota (a limit: null is unlimited)."""

    instances: int | None = None
    vcpus: float | None = None
    memory_mib: int | None = None
    overlay_bytes: int | None = None
    image_bytes: int | None = None


class Quota(Model):
    """A project's limits beside what it uses; ``over`` names the quotas its usage
    exceeds (instances a site started while cut off are never refused, see
    docs/quotas.md)."""

    project: str
    limits: QuotaValues
    usage: QuotaValues
    over: list[str] = Field(default_factory=list)
