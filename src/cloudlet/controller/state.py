"""What one controller process holds besides its database: sessions, settings, the
artifact store, long-poll waiters, traffic counters and unwritten heartbeats."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session, sessionmaker

from cloudlet.controller.batched_reads import BatchedRead, ShortReads
from cloudlet.controller.services import auth, sync
from cloudlet.controller.services._snapshot import SnapshotCache
from cloudlet.controller.services._store import ArtifactStore
from cloudlet.controller.services.artifact_fetches import FetchCounters
from cloudlet.settings import ControllerSettings

#: Long polls woken per pass at most, and passes per second, when many sites change
#: at once (an app rolled out to the fleet, a replica's NOTIFY backlog): every woken
#: agent pulls a document the controller builds, and ten thousand at one instant
#: would stall every other request for seconds. A lone change wakes at once.
WAKE_BURST = 50
WAKE_PASSES_PER_S = 10


class RevisionWatcher:
    """Wakes long-polling agents when their site's desired state changes, a bounded
    number per second (``WAKE_BURST``), oldest change first.

    Changes made in this process notify directly; those made by other replicas
    arrive by PostgreSQL NOTIFY (``replicas.listen_revisions``), or with SQLite
    workers by a poll of recently changed sites (``tasks._watch_revisions``).
    """

    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Event]] = defaultdict(set)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._due: dict[str, None] = {}  # an ordered set
        self._releasing: asyncio.Task[None] | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    @property
    def watched(self) -> set[str]:
        return set(self._waiters)

    @property
    def waiting(self) -> int:
        """How many long polls wait now."""
        return sum(len(events) for events in self._waiters.values())

    async def wait(self, site_id: str, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a change; True if one came."""
        event = asyncio.Event()
        self._waiters[site_id].add(event)
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
            return True
        except TimeoutError:
            return False
        finally:
            waiters = self._waiters.get(site_id)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[site_id]

    def notify(self, site_id: str) -> None:
        """Thread-safe: handlers run in a thread pool."""
        if self._loop is None or site_id not in self._waiters:
            return
        self._loop.call_soon_threadsafe(self._queue, site_id)

    def _queue(self, site_id: str) -> None:
        self._due[site_id] = None
        if self._releasing is None:
            self._releasing = asyncio.get_running_loop().create_task(self._release())

    async def _release(self) -> None:
        try:
            while True:
                for site_id in list(self._due)[:WAKE_BURST]:
                    del self._due[site_id]
                    for event in self._waiters.get(site_id, ()):
                        event.set()
                if not self._due:
                    return
                await asyncio.sleep(1 / WAKE_PASSES_PER_S)
        finally:
            self._releasing = None


@dataclass
class TrafficCounters:
    """Bytes exchanged per site, added up in memory and flushed in batches."""

    pending: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))

    def add(self, site_id: str, bytes_in: int, bytes_out: int) -> None:
        entry = self.pending[site_id]
        entry[0] += bytes_in
        entry[1] += bytes_out

    def take(self) -> dict[str, list[int]]:
        taken, self.pending = self.pending, defaultdict(lambda: [0, 0])
        return taken


@dataclass
class Heartbeats:
    """The latest heartbeat (see ``sync.is_heartbeat``) of each site, kept in memory
    and written in batches: the newest report of a site replaces an unwritten one.
    Only the event loop adds and takes, so no lock is needed."""

    pending: dict[str, dict[str, object]] = field(default_factory=dict)

    def add(self, site_id: str, values: dict[str, object]) -> None:
        self.pending[site_id] = values

    def take(self) -> dict[str, dict[str, object]]:
        taken, self.pending = self.pending, {}
        return taken


@dataclass
class ControllerState:
    settings: ControllerSettings
    engine: Engine
    sessions: sessionmaker[Session]
    artifacts: ArtifactStore
    watcher: RevisionWatcher = field(default_factory=RevisionWatcher)
    traffic: TrafficCounters = field(default_factory=TrafficCounters)
    heartbeats: Heartbeats = field(default_factory=Heartbeats)
    #: With SQLite, a connection the event loop reads through itself (see
    #: ``api.agent``); None with a database across the network.
    loop_connection: Connection | None = None
    #: Prometheus instruments (``controller.metrics.ControllerMetrics``), set at start.
    metrics: Any = None
    #: The alarm webhook (``controller.webhook.AlarmWebhook``), if one is configured.
    alarm_webhook: Any = None
    #: Whether this replica runs the fleet-wide loops (``replicas.Leadership``).
    leadership: Any = None
    #: Bounds the threads building desired-state documents (``api.agent``), made in
    #: the event loop at first use.
    document_limiter: Any = None
    #: The fleet as discovery ranks it, rebuilt every couple of seconds.
    fleet_snapshot: SnapshotCache = field(default_factory=SnapshotCache)
    #: Where agents dial this replica's handoff relay (host:port, or :port for the
    #: host they reach the controller at); None while it has none (``controller.relay``).
    relay_address: str | None = None
    #: The key this replica signs client tokens with (``cloudlet.tokens``).
    client_key: Any = None
    #: Image and overlay bytes sent to sites, not yet written (metering).
    fetches: FetchCounters = field(default_factory=FetchCounters)
    #: The fleet's certificate authority (``cloudlet.pki.CertificateAuthority``).
    ca: Any = None
    #: Revoked certificate serials (``controller.peer.RevokedSerials``).
    revoked: Any = None

    def __post_init__(self) -> None:
        self.reads = ShortReads(self.engine, self.loop_connection)
        #: The agent paths' point reads, coalesced (see ``batched_reads``).
        self.site_briefs: BatchedRead[str, auth.SiteBrief] = BatchedRead(
            auth.site_briefs, self.reads
        )
        self.site_revisions: BatchedRead[str, int] = BatchedRead(sync.site_revisions, self.reads)

    def close(self) -> None:
        self.reads.close()
        if self.loop_connection is not None:
            self.loop_connection.close()
        self.engine.dispose()
