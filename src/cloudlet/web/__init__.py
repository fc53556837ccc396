"""HTTP plumbing shared by the controller's API and the site-local API (below both)."""

from cloudlet.web.body_guard import MIB, BodyGuard, BodyLimits, StreamedRoute

__all__ = ["MIB", "BodyGuard", "BodyLimits", "StreamedRoute"]
