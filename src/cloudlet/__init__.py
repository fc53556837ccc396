"""Cloudlet: an edge cloud of many small sites run from one controller."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
