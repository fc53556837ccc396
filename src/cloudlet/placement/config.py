"""Placement configuration: which filters run, which weighers count and how much."""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["DEFAULT_FILTERS", "DEFAULT_WEIGHERS", "PlacementConfig"]

DEFAULT_FILTERS: tuple[str, ...] = ("excluded", "online", "capacity", "constraints", "latency")
DEFAULT_WEIGHERS: dict[str, float] = {"load": 1.0, "proximity": 1.0, "preference": 10.0}


class PlacementConfig(BaseModel):
    """Placement settings; names are looked up in the engine's registries at placement time."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled_filters: tuple[str, ...] = Field(
        default=DEFAULT_FILTERS,
        description="Filters to run, in order; a site's rejection is reported by the first "
        "filter that drops it.",
    )
    weighers: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_WEIGHERS),
        description="Weigher name -> multiplier applied to its 0..1 normalised weight. "
        "A negative multiplier inverts the preference; 0 disables it.",
    )

    @field_validator("enabled_filters")
    @classmethod
    def _unique_filters(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        dupes = sorted({n for n in value if value.count(n) > 1})
        if dupes:
            raise ValueError(f"filters listed twice: {', '.join(dupes)}")
        return value

    @field_validator("weighers")
    @classmethod
    def _finite_multipliers(cls, value: dict[str, float]) -> dict[str, float]:
        bad = sorted(name for name, m in value.items() if not math.isfinite(m))
        if bad:
            raise ValueError(f"weigher multipliers must be finite: {', '.join(bad)}")
        return value
