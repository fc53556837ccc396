"""Waiting helpers for the agent's loops: interruptible sleep and jittered backoff."""

from __future__ import annotations

import asyncio
import random


class Backoff:
    """Exponential backoff with jitter, capped: 0.5 s, 1 s, 2 s ... up to ``cap``."""

    def __init__(self, cap: float, base: float = 0.5) -> None:
        self.cap = cap
        self.base = min(base, cap)
        self.failures = 0

    def next(self) -> float:
        self.failures += 1
        delay = min(self.cap, self.base * 2 ** min(self.failures - 1, 30))
        # "Equal jitter": at least half the delay, so a fleet does not retry in step.
        return random.uniform(delay / 2, delay)

    def reset(self) -> None:
        self.failures = 0


async def sleep_or(stop: asyncio.Event, seconds: float, wake: asyncio.Event | None = None) -> None:
    """Sleep ``seconds``, returning early when ``stop`` (or ``wake``) is set."""
    events = [stop] if wake is None else [stop, wake]
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=max(0.0, seconds), return_when="FIRST_COMPLETED")
    finally:
        for w in waiters:
            w.cancel()
    if wake is not None:
        wake.clear()
