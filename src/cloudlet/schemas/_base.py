"""Base classes shared by every wire model."""

from __future__ import annotations

from typing import ClassVar, Self

from pydantic import BaseModel, ConfigDict, model_validator


class Model(BaseModel):
    """A read model: what the API answers. Unknown fields are ignored so that
    an older agent or CLI can talk to a newer controller."""

    model_config = ConfigDict(from_attributes=True, populate_by_name=True)


class Input(BaseModel):
    """A request body: unknown fields are an error, so typos do not pass silently,
    and so are NaN and infinities, which no quantity here can be. Strings are taken
    as sent (not stripped), so that the bounds the OpenAPI document states are the
    bounds applied."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Patch(Input):
    """A partial update: an omitted field keeps its value. ``null`` clears a field
    only where the model lists it in ``nullable``; elsewhere it is an error (a
    422 naming the field), never a NULL written into a required column."""

    nullable: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="after")
    def _no_nulls(self) -> Self:
        for field in sorted(self.model_fields_set - self.nullable):
            if getattr(self, field) is None:
                raise ValueError(f"{field} may not be null; omit it to keep its value")
        return self
