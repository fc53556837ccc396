"""Small shared types: names, labels, resources, RFC 9457 problems."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from cloudlet.schemas._base import Input, Model

#: DNS-label-like names: what operators type, safe in URLs, hostnames and paths.
Name = Annotated[
    str,
    Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$"),
]
LabelMap = dict[
    Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9._/-]+$")],
    Annotated[str, Field(max_length=253)],
]
Project = Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[a-z0-9-]+$")]

DEFAULT_PROJECT = "admin"


class Resources(Input):
    """What one app needs, or what one site offers."""

    vcpus: float = Field(1.0, gt=0, le=1024, description="Virtual CPUs.")
    memory_mib: int = Field(256, gt=0, le=4 * 1024 * 1024, description="Memory in MiB.")
    disk_gib: float = Field(1.0, ge=0, le=1024 * 1024, description="Disk in GiB.")


class Utilization(Model):
    """Fractions 0..1 of a site's capacity in use, as measured by its agent."""

    cpu: float = Field(0.0, ge=0, le=1)
    memory: float = Field(0.0, ge=0, le=1)
    disk: float = Field(0.0, ge=0, le=1)


class Problem(Model):
    """RFC 9457 problem details, the body of every error answer."""

    type: str = Field(description="A stable URI naming the kind of problem.")
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    errors: list[dict[str, object]] | None = Field(
        None, description="Per-field validation errors, when the input was invalid."
    )
