"""A fleet snapshot for discovery: every site's placement view, kept for a second or two.

Discovery is read-heavy and tolerates a snapshot a moment old (sites report every
few seconds anyway); building one from the database for 10,000 sites costs far
more than ranking them, so one controller process rebuilds it in the background
at most every ``ttl_s`` seconds and queries rank from the last one built.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from cloudlet import placement
from cloudlet.controller.db.models import SiteCache
from cloudlet.controller.services._rates import SiteRates, measure
from cloudlet.controller.services.instances import SiteRows, site_rows

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FleetSnapshot:
    found: SiteRows
    latitude: np.ndarray  # radians, NaN where unknown
    longitude: np.ndarray
    access_latency_ms: np.ndarray  # NaN where the operator set none
    cached: dict[str, frozenset[str]]  # site id -> complete artifact digests
    endpoints: dict[str, str | None]  # site id -> site-local API URL
    rates: dict[bool, dict[str, SiteRates]]  # VM apps or not -> site id -> measured rates
    built_at: float
    #: Candidates made so far, by row: a query makes only those it weighs.
    _made: dict[int, placement.SiteCandidate] = field(default_factory=dict, compare=False)

    def __len__(self) -> int:
        return len(self.found.rows)

    def site(self, i: int) -> placement.SiteCandidate:
        made = self._made.get(i)
        if made is None:  # two threads may both make it: the same value either way
            made = self._made[i] = self.found.candidate(i)
        return made

    def sites(self, rows: Iterable[int] | None = None) -> list[placement.SiteCandidate]:
        """The candidates of ``rows`` (default: every site), in that order."""
        return [self.site(int(i)) for i in (range(len(self)) if rows is None else rows)]


def build(session: Session, grace_s: float) -> FleetSnapshot:
    found = site_rows(session, grace_s)
    rows = found.rows

    def column(name: str) -> np.ndarray:
        return np.array([np.nan if (v := getattr(r, name)) is None else v for r in rows], float)

    caches = session.connection().execute(select(SiteCache.site_id, SiteCache.entries))
    cached = {
        site_id: frozenset(e["digest"] for e in entries if e.get("complete"))
        for site_id, entries in caches
    }
    endpoints = {r.id: r.local_api_url for r in rows}
    return FleetSnapshot(
        found, np.radians(column("latitude")), np.radians(column("longitude")),
        column("access_latency_ms"), cached, endpoints,
        measure(session), time.monotonic(),
    )  # fmt: skip


class SnapshotCache:
    """The current snapshot. Once one exists, a query never waits for a rebuild: one
    older than ``ttl_s`` is still answered from while a background thread builds the
    next (one at a time)."""

    def __init__(self, ttl_s: float = 2.0) -> None:
        self.ttl_s = ttl_s
        self._snapshot: FleetSnapshot | None = None
        self._lock = threading.Lock()

    def get(self, sessions: sessionmaker[Session], grace_s: float) -> FleetSnapshot:
        snap = self._snapshot
        if snap is None:
            with self._lock:
                if self._snapshot is None:
                    self._snapshot = self._build(sessions, grace_s)
                return self._snapshot
        if time.monotonic() - snap.built_at >= self.ttl_s and self._lock.acquire(blocking=False):
            threading.Thread(
                target=self._refresh, args=(sessions, grace_s), name="fleet-snapshot", daemon=True
            ).start()
        return snap

    def _build(self, sessions: sessionmaker[Session], grace_s: float) -> FleetSnapshot:
        with sessions() as session:
            return build(session, grace_s)

    def _refresh(self, sessions: sessionmaker[Session], grace_s: float) -> None:
        try:
            self._snapshot = self._build(sessions, grace_s)
        except Exception:
            log.exception("rebuilding the fleet snapshot failed; the old one stays")
        finally:
            self._lock.release()
