"""Host ports for workloads: one the OS has free right now."""

from __future__ import annotations

import socket
from collections.abc import Container

from cloudlet.errors import DriverError


def free_port(host: str = "127.0.0.1", taken: Container[int] = ()) -> int:
    """A port the OS considers free on ``host`` right now, and not in ``taken``.

    ``taken`` holds the ports already given to other workloads: they may be stopped,
    so the OS could hand the same port out again.

    Raises:
        DriverError: no such port in 100 tries.
    """
    for _ in range(100):
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in taken:
            return port
    raise DriverError(f"no free port on {host} outside the {len(taken)} already assigned")


__all__ = ["free_port"]
