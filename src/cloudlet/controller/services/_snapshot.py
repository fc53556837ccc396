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
from dataclasses import dataclass

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from cloudlet import placement
from cloudlet.controller.db.models import Site, SiteCache
from cloudlet.controller.services.instances import candidates

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FleetSnapshot:
    sites: list[placement.SiteCandidate]
    latitude: np.ndarray  # radians, NaN where unknown
    longitude: np.ndarray
    cached: dict[str, frozenset[str]]  # site id -> complete artifact digests
    endpoints: dict[str, str | None]  # site id -> site-local API URL
    built_at: float


def build(session: Session, grace_s: float) -> FleetSnapshot:
    sites = candidates(session, grace_s)
    lat = np.array([s.latitude if s.latitude is not None else np.nan for s in sites], float)
    lon = np.array([s.longitude if s.longitude is not None else np.nan for s in sites], float)
    cached = {
        site_id: frozenset(e["digest"] for e in entries if e.get("complete"))
        for site_id, entries in session.execute(select(SiteCache.site_id, SiteCache.entries))
    }
    endpoints = dict(session.execute(select(Site.id, Site.local_api_url)).tuples().all())
    return FleetSnapshot(
        sites, np.radians(lat), np.radians(lon), cached, endpoints, time.monotonic()
    )


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
