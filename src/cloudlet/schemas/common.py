"""Small shared types: names, labels, resources, RFC 9457 problems."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BeforeValidator, Field, WithJsonSchema

from cloudlet.schemas._base import Input, Model

#: DNS-label-like names: what operators type, safe in URLs, hostnames and paths.
Name = Annotated[
    str,
    Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$"),
]
_LABEL_KEY = r"^[A-Za-z0-9._/-]+$"
LabelMap = Annotated[
    dict[
        Annotated[str, Field(min_length=1, max_length=63, pattern=_LABEL_KEY)],
        Annotated[str, Field(max_length=253)],
    ],
    Field(max_length=64),
    # Said as JSON Schema means it: every key matches (pydantic's patternProperties
    # would leave keys that do not match unconstrained).
    WithJsonSchema(
        {
            "type": "object",
            "maxProperties": 64,
            "propertyNames": {"minLength": 1, "maxLength": 63, "pattern": _LABEL_KEY},
            "additionalProperties": {"type": "string", "maxLength": 253},
        }
    ),
]


def _json_number(value: object) -> object:
    # Lax validation would take true for 1 and "1" for 1; JSON Schema takes neither.
    if isinstance(value, bool | str | bytes):
        raise ValueError("expected a number")
    return value


#: Numbers as JSON Schema has them: an integral float is an integer; a bool or a
#: string is neither. Bounds go before it in ``Annotated`` (after it, pydantic's
#: JSON Schema for an optional field would spell them ``ge``/``le``).
JsonNumber = BeforeValidator(_json_number)
Float = Annotated[float, JsonNumber]
Integer = Annotated[int, JsonNumber]


Latitude = Annotated[float, Field(ge=-90, le=90), JsonNumber]
Longitude = Annotated[float, Field(ge=-180, le=180), JsonNumber]


def _iso_only(value: object) -> object:
    if isinstance(value, int | float) or (
        isinstance(value, str) and value.strip().lstrip("+-").replace(".", "", 1).isdigit()
    ):
        raise ValueError("expected an ISO 8601 date and time, e.g. 2026-12-01T08:00:00Z")
    return value


#: A date and time spelt in ISO 8601, never a bare number of seconds (which the
#: OpenAPI ``date-time`` format does not admit either).
IsoDatetime = Annotated[datetime, BeforeValidator(_iso_only)]
#: What a site calls a thing it reports (an instance id, a digest): bounded, never free text.
Ref = Annotated[str, Field(min_length=1, max_length=64)]
Project = Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[a-z0-9-]+$")]

DEFAULT_PROJECT = "admin"


class Resources(Input):
    """What one app needs, or what one site offers."""

    vcpus: Float = Field(1.0, gt=0, le=1024, description="Virtual CPUs.")
    memory_mib: Integer = Field(256, gt=0, le=4 * 1024 * 1024, description="Memory in MiB.")
    disk_gib: Float = Field(1.0, ge=0, le=1024 * 1024, description="Disk in GiB.")


class Utilization(Model):
    """Fractions 0..1 of a site's capacity in use, as measured by its agent."""

    cpu: Float = Field(0.0, ge=0, le=1)
    memory: Float = Field(0.0, ge=0, le=1)
    disk: Float = Field(0.0, ge=0, le=1)


PROBLEM_BASE = "https://cloudlet.dev/problems/"
PROBLEM_MEDIA_TYPE = "application/problem+json"


class Problem(Model):
    """RFC 9457 problem details, the body of every error answer (controller and site)."""

    type: str = Field(description="A stable URI naming the kind of problem.")
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    errors: list[dict[str, object]] | None = Field(
        None, description="Per-field validation errors, when the input was invalid."
    )


def problem_body(
    status: int, slug: str, title: str, detail: str | None, instance: str, **extra: object
) -> dict[str, object]:
    """The JSON of a :class:`Problem`, built as a plain dict (error paths stay cheap)."""
    return {
        "type": PROBLEM_BASE + slug,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": instance,
        **extra,
    }


def bearer_secret(authorization: str | None) -> str | None:
    """The secret of an ``Authorization: Bearer <secret>`` header, if that is what it is."""
    scheme, _, value = (authorization or "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None
