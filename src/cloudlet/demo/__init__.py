"""``cloudlet demo``: a controller and three sites on this machine, two apps, a link cut and back.

It shows the two use cases (a real-time service with a tight latency bound, a
batch worker with a loose one) and offline autonomy: a site cut off from the
controller keeps serving, and catches up when its link returns.
"""

from __future__ import annotations

from cloudlet.demo._run import DEFAULT_DURATION_S, DEFAULT_OFFLINE_GRACE_S, run_demo

__all__ = ["DEFAULT_DURATION_S", "DEFAULT_OFFLINE_GRACE_S", "run_demo"]
