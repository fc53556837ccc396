"""The site agent: local store, sync client, reconciler and site-local API.

The CLI runs it with ``asyncio.run(run_agent(settings.agent))``.
"""

from __future__ import annotations

from cloudlet.agent.daemon import Agent, run_agent
from cloudlet.agent.store import Store

__all__ = ["Agent", "Store", "run_agent"]
