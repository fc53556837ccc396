"""HTTP plumbing shared by the controller's API and the site-local API (below both)."""

from cloudlet.web.body_guard import (
    MIB,
    BodyGuard,
    BodyLimits,
    StreamedRoute,
    read_bounded,
    replay_body,
)

__all__ = ["MIB", "BodyGuard", "BodyLimits", "StreamedRoute", "read_bounded", "replay_body"]
