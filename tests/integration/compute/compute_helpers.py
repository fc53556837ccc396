"""Helpers shared by the compute integration tests: bounded waits, ports, pid checks."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import TypeVar

import psutil

T = TypeVar("T")


def wait_for(probe: Callable[[], T], what: str, timeout: float = 10.0, interval: float = 0.02) -> T:
    """Call ``probe`` until it returns something truthy; fail clearly after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout}s waiting for {what}; last: {value!r}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gone(pid: int) -> bool:
    """True once ``pid`` no longer runs. A zombie counts as gone: in this sandbox pid 1
    does not reap orphans, so a killed grandchild can linger as one."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def http_get(url: str) -> str | None:
    """The body at ``url``, or None while nothing answers there."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None
