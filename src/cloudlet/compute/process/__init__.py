"""The process compute driver: workloads as supervised process groups on this host."""

from __future__ import annotations

from cloudlet.compute.process._driver import ProcessDriver
from cloudlet.compute.process._spec import INHERITED_ENV

__all__ = ["INHERITED_ENV", "ProcessDriver"]
