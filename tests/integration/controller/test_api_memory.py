"""The controller's memory stays flat while 20 clients push 50 MB bodies at endpoints
that need no token (a real controller process; its RSS is sampled throughout)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest

from cloudlet.testbed.local import LocalController

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
BODY = 50 * MIB
CLIENTS = 20


def _chunks() -> Iterator[bytes]:
    piece = b"a" * (256 * 1024)
    yield b'{"join_token": "'
    for _ in range(BODY // len(piece)):
        yield piece
    yield b'"}'


def _push(url: str, declared: bool) -> int | str:
    """One client's 50 MB: with a Content-Length, or streamed without one."""
    content: bytes | Iterator[bytes] = b"a" * BODY if declared else _chunks()
    try:
        response = httpx.post(
            url, content=content, headers={"content-type": "application/json"}, timeout=60
        )
        return response.status_code
    except httpx.TransportError as exc:  # the server hung up on the rest of the body
        return type(exc).__name__


def test_rss_stays_flat_under_concurrent_huge_unauthenticated_bodies(tmp_path: Path) -> None:
    controller = LocalController(tmp_path / "controller", insecure=True).start()  # see conftest
    try:
        assert controller.proc is not None and controller.proc.popen is not None
        process = psutil.Process(controller.proc.popen.pid)
        for _ in range(20):  # warm up the request path before the baseline
            httpx.post(f"{controller.url}/v1/agent/enroll", json={"join_token": "x" * 8})
        baseline = process.memory_info().rss
        peak, done = baseline, threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, process.memory_info().rss)
                time.sleep(0.01)

        sampler = threading.Thread(target=sample)
        sampler.start()
        urls = [f"{controller.url}/v1/agent/enroll", f"{controller.url}/healthz"]
        with ThreadPoolExecutor(CLIENTS) as pool:
            outcomes = list(
                pool.map(
                    lambda i: _push(urls[i % 2], declared=i % 4 < 2),
                    range(CLIENTS),
                )
            )
        done.set()
        sampler.join()
        after = httpx.get(f"{controller.url}/healthz")
    finally:
        controller.stop()
    growth = (peak - baseline) / MIB
    print(f"controller RSS: baseline {baseline / MIB:.1f} MiB, peak +{growth:.1f} MiB")
    assert growth < 30, f"RSS grew by {growth:.1f} MiB for {CLIENTS} x 50 MB bodies"
    assert after.status_code == 200
    refused = [o for o in outcomes if o == 413]
    assert len(refused) >= CLIENTS // 2, outcomes  # the rest hung up on mid-body
    assert all(o == 413 or isinstance(o, str) for o in outcomes), outcomes
