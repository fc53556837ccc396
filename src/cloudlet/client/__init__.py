"""The client side of Cloudlet: find the best cloudlet for an app, then start or join it.

Depends only on :mod:`cloudlet.schemas` (and the root :mod:`cloudlet.errors`), httpx
and zeroconf, so a mobile client can ship it without the controller or agent.
"""

from __future__ import annotations

from cloudlet.client._browse import browse_sites
from cloudlet.client._connect import (
    Candidate,
    Connection,
    candidates,
    connect,
    discover,
    probe_rtt,
)

__all__ = [
    "Candidate",
    "Connection",
    "browse_sites",
    "candidates",
    "connect",
    "discover",
    "probe_rtt",
]
