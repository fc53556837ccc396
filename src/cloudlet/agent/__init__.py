"""The site agent: local store, sync client, reconciler and site-local API.

The CLI runs it with ``asyncio.run(run_agent(settings.agent))``. The names below are
imported on first use, so that ``cloudlet.agent.upgrade`` (which the supervisor
imports) does not bring the whole agent in with its parent package.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cloudlet.agent.daemon import Agent, run_agent
    from cloudlet.agent.store import Store

__all__ = ["Agent", "Store", "run_agent"]

_HOMES = {
    "Agent": "cloudlet.agent.daemon",
    "run_agent": "cloudlet.agent.daemon",
    "Store": "cloudlet.agent.store",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
