"""The alarm webhook: each raise and clear POSTed as JSON from a background task.

Nothing waits on it: committed notices go into a bounded queue (the newest are
dropped, and logged, when it is full) and one task sends them in order, retrying a
failed POST with doubling delays before it gives up on that notice (logged too).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from cloudlet.controller.services import alarms
from cloudlet.settings import AlarmSettings

log = logging.getLogger(__name__)


class AlarmWebhook:
    """Sends alarm notices to ``settings.webhook_url``; see the module docstring."""

    def __init__(self, settings: AlarmSettings) -> None:
        assert settings.webhook_url is not None
        self.url = settings.webhook_url
        self.settings = settings
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(settings.webhook_queue)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.sent = 0
        self.dropped = 0

    def watch(self, sessions: sessionmaker[Session]) -> None:
        """Take the notices of every transaction the sessions commit (none of those
        rolled back)."""
        event.listen(sessions, "after_commit", self._committed)
        event.listen(sessions, "after_rollback", alarms.drop_notices)

    def _committed(self, session: Session) -> None:
        notices = alarms.take_notices(session)
        if notices:
            self.submit(notices)

    def submit(self, notices: list[dict[str, Any]]) -> None:
        """Queue notices (thread-safe; never blocks)."""
        if self._loop is None:
            self.dropped += len(notices)
            log.warning("alarm webhook not running: %d notices dropped", len(notices))
            return
        self._loop.call_soon_threadsafe(self._put, notices)

    def _put(self, notices: list[dict[str, Any]]) -> None:
        for notice in notices:
            try:
                self._queue.put_nowait(notice)
            except asyncio.QueueFull:
                self.dropped += 1
                log.warning(
                    "alarm webhook queue full (%d): dropped %s %s about %s",
                    self._queue.maxsize,
                    notice["alarm_id"],
                    notice["state"],
                    notice["entity"],
                )

    async def run(self) -> None:
        """Send queued notices until cancelled."""
        self._loop = asyncio.get_running_loop()
        async with httpx.AsyncClient(timeout=self.settings.webhook_timeout_s) as client:
            while True:
                notice = await self._queue.get()
                await self._send(client, notice)

    async def _send(self, client: httpx.AsyncClient, notice: dict[str, Any]) -> None:
        delay = self.settings.webhook_backoff_s
        for attempt in range(self.settings.webhook_retries + 1):
            try:
                answer = await client.post(self.url, json=notice)
                answer.raise_for_status()
                self.sent += 1
                return
            except httpx.HTTPError as exc:
                failure = exc
            if attempt < self.settings.webhook_retries:
                await asyncio.sleep(delay)
                delay *= 2
        self.dropped += 1
        log.warning(
            "alarm webhook %s: gave up on %s %s about %s after %d tries: %s",
            self.url,
            notice["alarm_id"],
            notice["state"],
            notice["entity"],
            self.settings.webhook_retries + 1,
            failure,
        )
