"""The demo's two sample workloads, standalone standard-library programs run by an agent.

``fire_watch.py`` is the real-time use case (an HTTP service with a tight latency
bound); ``waste_route.py`` the batch one (a worker that recomputes a collection
route). They import nothing from Cloudlet: an app provider would ship them as is.
"""

from __future__ import annotations

from pathlib import Path

APPS_DIR = Path(__file__).resolve().parent
FIRE_WATCH = APPS_DIR / "fire_watch.py"
WASTE_ROUTE = APPS_DIR / "waste_route.py"

__all__ = ["APPS_DIR", "FIRE_WATCH", "WASTE_ROUTE"]
