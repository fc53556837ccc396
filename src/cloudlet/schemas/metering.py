"""Metering on the wire: the provider's price sheet and usage reports.

Amounts are decimal strings ("0.045"), never JSON numbers: a binary float cannot
hold 0.1, and a bill must add up to the cent.
"""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal
from typing import Annotated

from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StrictBool,
    WithJsonSchema,
    model_validator,
)

from cloudlet.schemas._base import Input, Model

_AMOUNT = r"^[0-9]{1,12}(\.[0-9]{1,9})?$"


def _amount(value: object) -> object:
    if isinstance(value, Decimal):  # built in code, not read from JSON
        return value
    if not isinstance(value, str) or re.fullmatch(_AMOUNT, value) is None:
        raise ValueError('an amount is a decimal string such as "0.045" (up to 9 decimals)')
    return Decimal(value)


#: A price: a non-negative decimal string with at most 12 digits before the point
#: and 9 after it.
Amount = Annotated[
    Decimal,
    BeforeValidator(_amount),
    PlainSerializer(lambda d: format(d, "f"), return_type=str),
    WithJsonSchema({"type": "string", "pattern": _AMOUNT, "examples": ["0.045"]}),
]
#: A decimal the controller computed, as a string.
DecimalText = Annotated[
    Decimal,
    PlainSerializer(lambda d: format(d, "f"), return_type=str),
    WithJsonSchema({"type": "string", "examples": ["1.500000"]}),
]
Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$", description="ISO 4217 code, e.g. EUR.")]


#: The priced units of a plan, as its fields are called.
PRICED = ("instance_hour", "vcpu_hour", "gib_hour", "gib_fetched")


class PricePlanSet(Input):
    """A plan: free, or prices per unit (an omitted price is zero)."""

    currency: Currency
    free: StrictBool = Field(False, description="Charge nothing (no price may be given).")
    instance_hour: Amount = Field(Decimal(0), description="Per hour an instance runs.")
    vcpu_hour: Amount = Field(Decimal(0), description="Per vCPU-hour.")
    gib_hour: Amount = Field(Decimal(0), description="Per GiB-hour of memory.")
    gib_fetched: Amount = Field(
        Decimal(0), description="Per GiB of the project's images and overlays sent to sites."
    )

    model_config = ConfigDict(
        extra="forbid",
        allow_inf_nan=False,
        # The validator's rule, said in the schema: a free plan lists no price.
        json_schema_extra={
            "anyOf": [
                {"properties": {"free": {"const": False}}},
                {
                    "required": ["free"],
                    "properties": {"free": {"const": True}},
                    "not": {"anyOf": [{"required": [k]} for k in PRICED]},
                },
            ]
        },
    )

    @model_validator(mode="after")
    def _free_lists_no_prices(self) -> PricePlanSet:
        given = [k for k in PRICED if k in self.model_fields_set]
        if self.free and given:
            raise ValueError(f"a free plan lists no prices (got {', '.join(given)})")
        return self


class PricePlan(Model):
    """One entry of the price sheet: the default (no project), a project's (no app), or
    an app's. The most specific one applies: app, then project, then default."""

    project: str | None
    app: str | None
    currency: str
    free: bool
    instance_hour: DecimalText
    vcpu_hour: DecimalText
    gib_hour: DecimalText
    gib_fetched: DecimalText
    updated_at: datetime


class PlanRef(Model):
    """Which plan priced a line: its scope (app, project, default, or none)."""

    scope: str = Field(description="app, project, default, or none (nothing is charged).")
    currency: str | None
    free: bool


class UsageLine(Model):
    """What one app ran at one site in the period, and its cost."""

    app: str
    site: str
    instance_hours: DecimalText
    vcpu_hours: DecimalText
    gib_hours: DecimalText
    plan: PlanRef
    cost: DecimalText


class FetchLine(Model):
    """Bytes of one image or overlay of the project sent to one site in the period."""

    site: str
    kind: str
    artifact: str
    name: str | None
    bytes: int
    gib: DecimalText
    plan: PlanRef
    cost: DecimalText


class LateRecord(Model):
    """A usage record that arrived after the period ended: included in the lines
    above, listed so that a report taken earlier can be reconciled with this one."""

    site: str
    seq: int
    app: str
    instance: str | None
    recorded_at: datetime = Field(description="When the site wrote it down.")
    received_at: datetime = Field(description="When it reached the controller.")
    instance_hours: DecimalText
    vcpu_hours: DecimalText
    gib_hours: DecimalText
    currency: str | None
    cost: DecimalText


class Total(Model):
    currency: str | None
    cost: DecimalText


class UsageReport(Model):
    """A project's usage and its cost over ``from``..``to`` (``to`` excluded), as the
    controller knew it at ``as_of``."""

    project: str
    from_: datetime = Field(alias="from")
    to: datetime
    as_of: datetime
    closed: bool = Field(description="The period had ended at as_of: only late records change it.")
    lines: list[UsageLine]
    fetches: list[FetchLine]
    totals: list[Total] = Field(description="One per currency.")
    late: list[LateRecord]
    late_truncated: bool = Field(False, description="More late records than listed.")
