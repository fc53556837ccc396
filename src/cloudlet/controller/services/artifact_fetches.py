"""Bytes of images and overlays sent to sites, per project and site: counted where
the blob response hands each chunk to the connection, written a batch at a time.

Counting is an addition in memory (no database write per request, nor per chunk);
every few seconds the counts become one row per (project, site, artifact) that sent
anything, dated when written (``at``). A period's bytes are those of the rows
written within it, so a closed period never changes by fetches: bytes sent in its
last seconds and written just after it belong to the next one. A replica's counts
not yet written when it crashes are lost (a few seconds' worth); a failed write
keeps them for the next.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime

from sqlalchemy.orm import Session

from cloudlet.controller.db.models import ArtifactFetch
from cloudlet.controller.services._util import utcnow

#: (project, site id, kind, artifact id or digest)
Key = tuple[str, str, str, str]


class FetchCounters:
    """Bytes sent per key since the last :meth:`take`; any thread may add."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[Key, int] = {}
        self._since: datetime | None = None

    def add(self, key: Key, nbytes: int) -> None:
        with self._lock:
            if self._since is None:
                self._since = utcnow()
            self._counts[key] = self._counts.get(key, 0) + nbytes

    def counter(self, key: Key) -> Callable[[int], None]:
        """A callback that counts bytes sent under ``key``."""
        return lambda nbytes: self.add(key, nbytes)

    def take(self) -> tuple[datetime | None, dict[Key, int]]:
        """The counts so far and when the first of them came; the counters restart."""
        with self._lock:
            taken = (self._since, self._counts)
            self._since, self._counts = None, {}
        return taken

    def put_back(self, since: datetime, counts: dict[Key, int]) -> None:
        """Counts a failed write could not store, added to the next batch."""
        with self._lock:
            self._since = min(since, self._since) if self._since else since
            for key, nbytes in counts.items():
                self._counts[key] = self._counts.get(key, 0) + nbytes


def write(session: Session, since: datetime, counts: dict[Key, int], at: datetime) -> int:
    """One row per key that sent bytes; returns how many rows."""
    rows = [
        {
            "project": project,
            "site_id": site_id,
            "kind": kind,
            "artifact": artifact,
            "bytes": nbytes,
            "since": since,
            "at": at,
        }
        for (project, site_id, kind, artifact), nbytes in sorted(counts.items())
        if nbytes > 0
    ]
    if rows:
        session.execute(ArtifactFetch.__table__.insert(), rows)
    return len(rows)
