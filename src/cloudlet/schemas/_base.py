"""Base classes shared by every wire model."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Model(BaseModel):
    """A read model: what the API answers. Unknown fields are ignored so that
    an older agent or CLI can talk to a newer controller."""

    model_config = ConfigDict(from_attributes=True, populate_by_name=True)


class Input(BaseModel):
    """A request body: unknown fields are an error, so typos do not pass silently."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
