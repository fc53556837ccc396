"""The sync client's loops: enrollment, desired-state pull (long-poll) and report (heartbeat).

A report carries the instances and the artifact cache only when they changed since
the last acknowledged report.

Pull and report are separate loops, each with its own bounded, jittered backoff, so
a slow long-poll never delays a heartbeat. While the controller is unreachable a
third loop probes its ``/healthz`` every ``probe_interval_s`` (jittered), and when a
probe that failed starts answering it wakes both loops after a random spread of up to
``reconnect_spread_s``:
a restarted controller is found within a couple of seconds, whatever the backoff
had grown to, and a fleet comes back spread out rather than in one burst. A request
that was already under way when the probe succeeded started during the outage: it
waits on a connection whose SYN or data TCP retransmits with a growing backoff, so it
is abandoned and sent again at once over a fresh connection.
Network failures and 5xx answers only back off; a 401 means the site was
decommissioned or its credential revoked, and both loops stop while the agent keeps
running its local workloads.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from pydantic import ValidationError

from cloudlet import __version__
from cloudlet.agent import actual, alarms, desired, outbox, resources
from cloudlet.agent._wait import Backoff, sleep_or
from cloudlet.agent.artifacts import ArtifactCache
from cloudlet.agent.client import ControllerClient
from cloudlet.agent.desired import CursorGapError
from cloudlet.agent.reconciler import Reconciler
from cloudlet.agent.store import (
    CONTROLLER_URL,
    CREDENTIAL,
    SITE_ID,
    SITE_NAME,
    Store,
    set_meta,
)
from cloudlet.agent.tls import TlsJoin
from cloudlet.errors import AuthError, ConfigError, ControllerUnreachableError, SyncError
from cloudlet.schemas import (
    ActualState,
    AgentReport,
    DesiredStateDoc,
    EnrollRequest,
    ReportAck,
    Resources,
)
from cloudlet.schemas.alarms import AlarmId, AlarmSeverity

log = logging.getLogger(__name__)

M = TypeVar("M")

BACKLOG = AlarmId.SITE_OUTBOX_BACKLOG.value
DISK_LOW = AlarmId.SITE_DISK_LOW.value
CACHE_FULL = AlarmId.SITE_CACHE_FULL.value

#: Events per report; the rest follow at once in the next report.
REPORT_BATCH = 500
#: Pause before re-pulling after an answer that did not move the cursor.
IDLE_REPOLL_S = 2.0
#: Shortest time between two reports when state changes hurry them.
REPORT_MIN_GAP_S = 0.5


@dataclass
class SyncStatus:
    """What the health check shows about the link to the controller."""

    last_pull_at: datetime | None = None
    last_report_at: datetime | None = None
    reachable: bool | None = None
    revoked: bool = False
    last_error: str | None = None


class Syncer:
    """Keeps one site's store in step with the controller."""

    def __init__(
        self,
        store: Store,
        client: ControllerClient,
        reconciler: Reconciler,
        *,
        data_dir: Path,
        poll_wait_s: float,
        report_interval_s: float,
        backoff_max_s: float,
        probe_interval_s: float = 1.0,
        reconnect_spread_s: float = 1.0,
        cache: ArtifactCache | None = None,
        on_desired: Callable[[], None] | None = None,
        outbox_cap: int = outbox.DEFAULT_CAP,
        disk_low_at: float = 0.9,
        cache_full_at: float = 0.9,
    ) -> None:
        self.store = store
        self.client = client
        self.reconciler = reconciler
        #: The site-local API's URL, reported so that discovery can point clients at it.
        self.local_api: str | None = None
        self.data_dir = data_dir
        self.poll_wait_s = poll_wait_s
        self.report_interval_s = report_interval_s
        self.backoff_max_s = backoff_max_s
        self.probe_interval_s = probe_interval_s
        self.reconnect_spread_s = reconnect_spread_s
        self.status = SyncStatus()
        self.pull_wake = asyncio.Event()
        self.report_wake = asyncio.Event()
        #: Set when actual state changed, so the controller hears of it before the
        #: next interval (at most one report per REPORT_MIN_GAP_S).
        self.report_soon = asyncio.Event()
        #: Set (and replaced) each time a probe finds the controller back.
        self._link_back = asyncio.Event()
        self.cache = cache
        #: Set by the agent unless it runs --insecure: enrollment then sends CSRs.
        self.tls_join: TlsJoin | None = None
        #: Called after every stored desired document (the images list may have changed).
        self.on_desired = on_desired
        self.outbox_cap = outbox_cap
        # More waiting than the cap (counted before folding), cleared at half of it.
        self._backlog = alarms.ThresholdAlarm(
            store, BACKLOG, AlarmSeverity.MINOR, outbox_cap + 1, outbox_cap // 2,
            lambda n: f"{n:.0f} events wait to be sent (the outbox's cap is {outbox_cap})",
        )  # fmt: skip
        self._disk_low = alarms.ThresholdAlarm(
            store, DISK_LOW, AlarmSeverity.MAJOR, disk_low_at, disk_low_at - 0.05,
            lambda used: f"the data directory's disk is {used:.0%} full",
        )  # fmt: skip
        self._cache_full = alarms.ThresholdAlarm(
            store, CACHE_FULL, AlarmSeverity.MAJOR, cache_full_at, cache_full_at - 0.05,
            lambda used: f"artifacts the site must keep fill {used:.0%} of its cache budget",
        )  # fmt: skip
        #: The highest seq sent in any report, answered or not: never folded. What
        #: waits at start may have gone out from the previous process.
        self._sent_upto = outbox.last_seq(store)
        self._capacity: Resources | None = None
        self._acked_version: int | None = None
        self._acked_cache: int | None = None

    @property
    def capacity(self) -> Resources:
        if self._capacity is None:
            self._capacity = resources.capacity(self.data_dir)
        return self._capacity

    def _failed(self, exc: SyncError) -> None:
        unreachable = isinstance(exc, ControllerUnreachableError)
        if not unreachable:
            log.warning("sync with the controller failed: %s", exc)
        elif self.status.reachable is not False:
            log.warning("controller unreachable (retrying with backoff): %s", exc)
        self.status.reachable = not unreachable
        self.status.last_error = str(exc)

    def _revoked(self, exc: AuthError) -> None:
        if not self.status.revoked:
            log.error(
                "the controller refused this site's credential (%s): the site was "
                "decommissioned or its credential revoked; local workloads keep running and "
                "the agent asks again every %.0fs in case the refusal was transient",
                exc,
                self.backoff_max_s,
            )
        self.status.revoked = True
        self.status.last_error = str(exc)
        # Let the other loop notice at once instead of after its sleep.
        self.pull_wake.set()
        self.report_wake.set()

    def _controller_went_back(self, revision: int) -> None:
        """The controller's revision is behind ours: it was restored from a backup and
        lost what it stored since. Send our event journal and full lists again."""
        replayed = outbox.replay(self.store)
        self._acked_version = self._acked_cache = None
        log.warning(
            "the controller is at revision %d, behind this site's %d (restored from a "
            "backup?): %d journalled events queued again, full state follows",
            revision,
            self.store.cursor,
            replayed,
        )

    # -- enrollment -------------------------------------------------------------------

    async def enroll(self, join_token: str, stop: asyncio.Event) -> bool:
        """Trade the join token for a credential, retrying while unreachable.

        Returns:
            True once enrolled; False if ``stop`` was set first.

        Raises:
            AuthError: the controller refused the token.
            ConfigError: the token is malformed.
        """
        tls = self.tls_join
        csr = local_csr = None
        if tls is not None:
            csr, local_csr = tls.tls.requests("site", tls.local_names)
        try:
            request = EnrollRequest(
                join_token=join_token,
                agent_version=__version__,
                capacity=self.capacity,
                csr=csr,
                local_csr=local_csr,
            )
        except ValidationError as exc:
            raise ConfigError(f"invalid join token: {exc.errors()[0]['msg']}") from exc
        backoff = Backoff(self.backoff_max_s)
        while not stop.is_set():
            try:
                if tls is not None:
                    await tls.tls.learn_ca(self.client.base_url, tls.ca_file, tls.ca_fingerprint)
                answer = await self.client.enroll(request)
            except ControllerUnreachableError as exc:
                self._failed(exc)
                await sleep_or(stop, backoff.next())
                continue
            if tls is not None:
                if answer.certificates is None:
                    raise ConfigError(
                        "the controller issued no certificate: if it runs --insecure, "
                        "run the agent --insecure too"
                    )
                tls.tls.install(answer.certificates)
                # The enrollment's connection presents no certificate: not for the loops.
                self.client.reconnect()
            with self.store.transaction() as conn:
                set_meta(conn, CREDENTIAL, answer.credential)
                set_meta(conn, SITE_ID, answer.site_id)
                set_meta(conn, SITE_NAME, answer.site_name)
                set_meta(conn, CONTROLLER_URL, ",".join(self.client.base_urls))
            self.client.credential = answer.credential
            self.status.reachable = True
            log.info("enrolled as site %s (%s)", answer.site_name, answer.site_id)
            return True
        return False

    # -- pull -------------------------------------------------------------------------

    async def _guarded(
        self, name: str, loop: Callable[[asyncio.Event], Awaitable[None]], stop: asyncio.Event
    ) -> None:
        """Run ``loop``; if it dies of a bug, log it and start it again after a pause."""
        backoff = Backoff(self.backoff_max_s)
        while not stop.is_set():
            try:
                await loop(stop)
                return
            except Exception:
                log.exception("the %s loop failed unexpectedly; restarting it", name)
                await sleep_or(stop, backoff.next())

    async def pull_loop(self, stop: asyncio.Event) -> None:
        """Long-poll desired state by cursor and store it, until stopped or revoked."""
        await self._guarded("pull", self._pull_loop, stop)

    async def report_loop(self, stop: asyncio.Event) -> None:
        """Report every ``report_interval_s`` (jittered) until stopped or revoked."""
        await self._guarded("report", self._report_loop, stop)

    async def probe_loop(self, stop: asyncio.Event) -> None:
        """While unreachable, probe the controller; wake the loops when it is back."""
        await self._guarded("probe", self._probe_loop, stop)

    async def _probe_loop(self, stop: asyncio.Event) -> None:
        # Armed until a probe succeeds; re-armed by a failed one. So the loops are
        # woken once per return, not once a probe while /healthz answers and the
        # API itself still fails (their own backoff rules then).
        armed = True
        while not stop.is_set():
            await sleep_or(stop, self.probe_interval_s * random.uniform(0.5, 1.5))
            if stop.is_set() or self.status.reachable is not False or self.status.revoked:
                continue
            if not await self.client.probe():
                armed = True
                continue
            if armed:
                armed = False
                log.info("the controller answers again; resuming sync")
                await sleep_or(stop, random.uniform(0, self.reconnect_spread_s))
                self._link_back.set()
                self._link_back = asyncio.Event()
                self.pull_wake.set()
                self.report_wake.set()

    async def _unless_link_back(self, call: Awaitable[M]) -> M:
        """Await ``call``, abandoning it if a probe finds the controller back first: a
        request begun while the link was down would finish only at TCP's next
        retransmission, seconds after the link returned."""
        back = self._link_back
        task = asyncio.ensure_future(call)
        waiter = asyncio.ensure_future(back.wait())
        try:
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            if not task.done():
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task
        if task.cancelled():
            raise ControllerUnreachableError("the link came back under a stalled request")
        return task.result()

    async def _pull_loop(self, stop: asyncio.Event) -> None:
        backoff = Backoff(self.backoff_max_s)
        force_full = False
        while not stop.is_set():
            if self.status.revoked:
                # The report loop probes the credential; it wakes us when it works again.
                await sleep_or(stop, self.backoff_max_s, self.pull_wake)
                continue
            since = 0 if force_full else self.store.cursor
            try:
                doc: DesiredStateDoc | None = await self._unless_link_back(
                    self.client.pull(since, self.poll_wait_s)
                )
            except AuthError as exc:
                self._revoked(exc)
                continue
            except SyncError as exc:
                self._failed(exc)
                await sleep_or(stop, backoff.next(), self.pull_wake)
                continue
            self.status.last_pull_at = datetime.now(UTC)
            self.status.reachable = True
            backoff.reset()
            if doc is None:
                continue
            if doc.revision < self.store.cursor:
                self._controller_went_back(doc.revision)
            try:
                changed = desired.apply_doc(self.store, doc)
            except CursorGapError as exc:
                # A delta from elsewhere than our cursor may have skipped changes:
                # start over from a full snapshot (since=0).
                log.warning("%s; pulling a full snapshot", exc)
                if force_full:
                    await sleep_or(stop, backoff.next(), self.pull_wake)
                force_full = True
                continue
            force_full = False
            log.debug("desired state now at revision %d (full=%s)", doc.revision, doc.full)
            if self.on_desired is not None:
                self.on_desired()
            if changed:
                self.reconciler.wake()
            if doc.revision == since:
                # An immediate answer that moved nothing (a fresh site at revision 0
                # answers since=0 at once): pause so the poll does not spin.
                await sleep_or(stop, min(self.poll_wait_s, IDLE_REPOLL_S), self.pull_wake)

    # -- report -----------------------------------------------------------------------

    async def report_once(self) -> tuple[ReportAck, bool]:
        """Send one report and drop what it acknowledged.

        Returns:
            The ack, and whether more events are waiting to go at once.
        """
        # Measured before folding, which keeps the depth near the cap during an outage.
        self._backlog.observe(outbox.depth(self.store))
        # Between two reports; only events never sent may be folded.
        if folded := outbox.compact(self.store, self.outbox_cap, after=self._sent_upto):
            log.warning("outbox over its cap of %d: %d records folded", self.outbox_cap, folded)
        utilization = await asyncio.to_thread(resources.utilization, self.data_dir)
        # Both before the events are taken: each may add one.
        self._disk_low.observe(utilization.disk)
        if self.cache is not None:
            self._cache_full.observe(await asyncio.to_thread(self.cache.pinned_fraction))
        events = outbox.pending(self.store, REPORT_BATCH)
        if events:
            self._sent_upto = max(self._sent_upto, events[-1].seq)
        version = actual.version(self.store)
        rows = actual.list_all(self.store)
        include = version != self._acked_version
        cache_version = self.cache.version() if self.cache is not None else None
        with_cache = self.cache is not None and cache_version != self._acked_cache
        # Deleted rows go once more in this report (or went in the last acked one, if
        # the list is unchanged since); after this ack the site can forget them.
        deleted = [r.id for r in rows if r.state is ActualState.DELETED]
        report = AgentReport(
            agent_version=__version__,
            applied_revision=self.reconciler.applied_revision,
            capacity=self.capacity,
            utilization=utilization,
            instances=[r.to_wire() for r in rows] if include else None,
            events=events,
            cache=self.cache.listing() if self.cache is not None and with_cache else None,
            local_api=self.local_api,
        )
        ack = await self._unless_link_back(self.client.report(report))
        if ack.rejected:
            for refused in ack.rejected:
                log.error("the controller refused event seq %d: %s", refused.seq, refused.reason)
            outbox.drop(self.store, [r.seq for r in ack.rejected])
        if ack.revision < self.store.cursor:
            self._controller_went_back(ack.revision)
        if ack.acked_seq > 0:
            outbox.ack(self.store, ack.acked_seq, sent=[e.seq for e in events])
            if outbox.skip_past(self.store, ack.acked_seq):
                log.warning(
                    "the controller has events up to seq %d, beyond this site's counter "
                    "(a restored store?); numbering continues after it",
                    ack.acked_seq,
                )
        if include:
            self._acked_version = version
        if with_cache:
            self._acked_cache = cache_version
        if deleted:
            actual.forget(self.store, deleted)
            desired.forget(self.store, deleted)
        self.status.last_report_at = datetime.now(UTC)
        self.status.reachable = True
        if ack.revision > self.store.cursor:
            self.pull_wake.set()
        more = bool(events) and outbox.depth(self.store) > 0 and ack.acked_seq >= events[-1].seq
        return ack, more

    async def _report_loop(self, stop: asyncio.Event) -> None:
        backoff = Backoff(self.backoff_max_s)
        while not stop.is_set():
            try:
                _, more = await self.report_once()
            except AuthError as exc:
                self._revoked(exc)
                await sleep_or(stop, self.backoff_max_s)
                continue
            except SyncError as exc:
                self._failed(exc)
                await sleep_or(stop, backoff.next(), self.report_wake)
                continue
            backoff.reset()
            if self.status.revoked:
                log.warning("the controller accepts this site's credential again; sync resumes")
                self.status.revoked = False
                self.pull_wake.set()
            if more:
                continue
            interval = self.report_interval_s * random.uniform(0.8, 1.2)
            gap = min(interval, REPORT_MIN_GAP_S)
            await sleep_or(stop, gap)
            await sleep_or(stop, interval - gap, self.report_soon)
