"""One report round: what it carries, what its ack drops, what it lets the site forget."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest
from agent_fakes import doc, instance

from cloudlet.agent import actual, desired, outbox
from cloudlet.agent.reconciler import Reconciler
from cloudlet.agent.store import Store
from cloudlet.agent.sync import Syncer
from cloudlet.compute import FakeDriver
from cloudlet.schemas import AgentReport, EventKind, RejectedEvent, ReportAck


class AckingClient:
    """Records reports; acknowledges up to ``ack_upto`` (default: all) at ``revision``."""

    def __init__(self) -> None:
        self.reports: list[AgentReport] = []
        self.ack_upto: int | None = None
        self.acked_override: int | None = None
        self.rejected: list[RejectedEvent] = []
        self.revision = 0
        self.bytes_sent = self.bytes_received = 0
        self.credential = "c"

    async def report(self, report: AgentReport) -> ReportAck:
        self.reports.append(report)
        top = max((e.seq for e in report.events), default=0)
        acked = top if self.ack_upto is None else min(top, self.ack_upto)
        if self.acked_override is not None:
            acked = self.acked_override
        return ReportAck(
            acked_seq=acked,
            rejected=self.rejected,
            revision=self.revision,
            server_time=datetime.now(UTC),
        )


def syncer_for(store: Store, tmp_path: Path, client: AckingClient, **kw: float) -> Syncer:
    return Syncer(
        store,
        client,  # type: ignore[arg-type]
        Reconciler(store, FakeDriver()),
        data_dir=tmp_path,
        poll_wait_s=1,
        report_interval_s=1,
        backoff_max_s=1,
        **kw,
    )


def test_ack_drops_only_what_it_covers(store: Store, tmp_path: Path) -> None:
    for _ in range(4):
        outbox.record(store, EventKind.ALARM)
    client = AckingClient()
    client.ack_upto = 2
    syncer = syncer_for(store, tmp_path, client)
    asyncio.run(syncer.report_once())
    assert [e.seq for e in client.reports[0].events] == [1, 2, 3, 4]
    assert [e.seq for e in outbox.pending(store)] == [3, 4]
    client.ack_upto = None
    asyncio.run(syncer.report_once())
    assert [e.seq for e in client.reports[1].events] == [3, 4]
    assert outbox.depth(store) == 0
    assert syncer.status.last_report_at is not None


def test_instances_go_only_when_changed_since_the_last_ack(store: Store, tmp_path: Path) -> None:
    desired.apply_doc(store, doc(1, [instance("i1")], full=True))
    client = AckingClient()
    syncer = syncer_for(store, tmp_path, client)
    asyncio.run(syncer.reconciler.reconcile_once())
    asyncio.run(syncer.report_once())
    asyncio.run(syncer.report_once())
    first, second = client.reports
    assert [i.state.value for i in first.instances or []] == ["running"]
    assert first.applied_revision == 1 and first.capacity is not None
    assert second.instances is None
    # A stop changes the list: it goes again.
    desired.apply_doc(store, doc(2, [instance("i1", state="stopped", revision=2)], since=1))
    asyncio.run(syncer.reconciler.reconcile_once())
    asyncio.run(syncer.report_once())
    assert [i.state.value for i in client.reports[2].instances or []] == ["stopped"]


def test_deleted_instances_are_forgotten_after_the_ack(store: Store, tmp_path: Path) -> None:
    desired.apply_doc(store, doc(1, [instance("i1")], full=True))
    client = AckingClient()
    syncer = syncer_for(store, tmp_path, client)
    asyncio.run(syncer.reconciler.reconcile_once())
    desired.apply_doc(store, doc(2, [], full=True))
    asyncio.run(syncer.reconciler.reconcile_once())
    assert actual.get(store, "i1").state.value == "deleted"  # type: ignore[union-attr]
    asyncio.run(syncer.report_once())
    assert [i.state.value for i in client.reports[0].instances or []] == ["deleted"]
    assert actual.get(store, "i1") is None
    assert desired.entries(store) == {}


def test_ack_revision_ahead_wakes_the_pull_loop(store: Store, tmp_path: Path) -> None:
    client = AckingClient()
    client.revision = 5
    syncer = syncer_for(store, tmp_path, client)
    asyncio.run(syncer.report_once())
    assert syncer.pull_wake.is_set()


def test_counter_behind_the_controller_skips_past_its_ack(store: Store, tmp_path: Path) -> None:
    # A store restored from an old backup: the controller already holds seqs up to 40.
    outbox.record(store, EventKind.ALARM)
    client = AckingClient()
    client.acked_override = 40
    asyncio.run(syncer_for(store, tmp_path, client).report_once())
    assert outbox.depth(store) == 0
    assert outbox.record(store, EventKind.ALARM) == 41


def test_applied_revision_is_what_the_reconciler_acted_on(store: Store, tmp_path: Path) -> None:
    client = AckingClient()
    syncer = syncer_for(store, tmp_path, client)
    desired.apply_doc(store, doc(3, [instance("i1")], full=True))
    asyncio.run(syncer.report_once())  # stored, not yet acted on
    asyncio.run(syncer.reconciler.reconcile_once())
    asyncio.run(syncer.report_once())
    assert [r.applied_revision for r in client.reports] == [0, 3]


def test_the_cache_goes_only_when_it_changed(store: Store, tmp_path: Path) -> None:
    from cloudlet.agent.artifacts import ArtifactCache
    from cloudlet.schemas.artifacts import ArtifactKind

    cache = ArtifactCache(store, tmp_path / "cache", budget_bytes=1 << 20)
    client = AckingClient()
    syncer = syncer_for(store, tmp_path, client)
    syncer.cache = cache
    asyncio.run(syncer.report_once())
    assert client.reports[-1].cache == []
    asyncio.run(syncer.report_once())
    assert client.reports[-1].cache is None
    cache.begin(ArtifactKind.IMAGE, "a" * 64, 100)
    cache.progress(ArtifactKind.IMAGE, "a" * 64, 40)
    asyncio.run(syncer.report_once())
    [held] = client.reports[-1].cache or []
    assert (held.digest, held.fetched, held.size, held.complete) == ("a" * 64, 40, 100, False)


def test_refused_events_are_logged_and_dropped(
    store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for _ in range(3):
        outbox.record(store, EventKind.ALARM)
    client = AckingClient()
    client.acked_override = 1  # the controller stored 1, refused 3 past its bound
    client.rejected = [RejectedEvent(seq=3, reason="seq 3 is more than 1 past the last")]
    asyncio.run(syncer_for(store, tmp_path, client).report_once())
    assert [e.seq for e in outbox.pending(store)] == [2]
    assert "refused event seq 3: seq 3 is more than 1 past the last" in caplog.text


def test_a_backlog_over_the_cap_raises_its_alarm_once_and_clears_at_half(
    store: Store, tmp_path: Path
) -> None:
    from cloudlet.agent import alarms

    client = AckingClient()
    client.ack_upto = 0  # the controller stores nothing: the backlog grows
    syncer = syncer_for(store, tmp_path, client, outbox_cap=10)
    for n in range(12):  # lifecycle events: never folded
        outbox.record(store, EventKind.INSTANCE_STATE, data={"state": "running", "n": n})
    asyncio.run(syncer.report_once())
    asyncio.run(syncer.report_once())
    assert alarms.is_active(store, "site.outbox-backlog")
    raised = [e for e in outbox.pending(store, 100) if e.data.get("alarm_id")]
    assert [e.data["state"] for e in raised] == ["raise"]  # once, not once a report
    client.ack_upto = None  # the link is back: everything is acknowledged
    asyncio.run(syncer.report_once())
    asyncio.run(syncer.report_once())
    assert not alarms.is_active(store, "site.outbox-backlog")


def test_a_full_disk_raises_site_disk_low_and_a_freed_one_clears_it(
    store: Store, tmp_path: Path
) -> None:
    from cloudlet.agent import alarms

    client = AckingClient()
    # The real disk under tmp_path is some fraction full: a mark just above 0 is
    # crossed, the top mark (1.0, "100 % full") is not.
    syncer = syncer_for(store, tmp_path, client, disk_low_at=0.0001)
    asyncio.run(syncer.report_once())
    assert alarms.is_active(store, "site.disk-low")
    syncer._disk_low.clear_at = 1.0  # as if the disk were freed below the mark
    asyncio.run(syncer.report_once())
    assert not alarms.is_active(store, "site.disk-low")
    states = [
        e.data["state"]
        for r in client.reports
        for e in r.events
        if e.data.get("alarm_id") == "site.disk-low"
    ]
    assert states == ["raise", "clear"]


def _cache_alarm_states(client: AckingClient) -> list[str]:
    return [
        e.data["state"]
        for r in client.reports
        for e in r.events
        if e.data.get("alarm_id") == "site.cache-full"
    ]


def test_pinned_artifacts_filling_the_cache_raise_site_cache_full_also_offline(
    store: Store, tmp_path: Path
) -> None:
    from cloudlet.agent import alarms
    from cloudlet.agent.artifacts import ArtifactCache
    from cloudlet.errors import ControllerUnreachableError
    from cloudlet.schemas.artifacts import ArtifactKind

    cache = ArtifactCache(store, tmp_path / "cache", budget_bytes=1000)
    cache.mark_complete(ArtifactKind.IMAGE, "a" * 64, 950)  # unpinned: evictable
    cache.mark_complete(ArtifactKind.IMAGE, "b" * 64, 880)
    client = AckingClient()
    syncer = syncer_for(store, tmp_path, client)
    syncer.cache = cache
    asyncio.run(syncer.report_once())
    assert not alarms.is_active(store, "site.cache-full")  # 183% full, all of it evictable

    class Unreachable(AckingClient):
        async def report(self, report: AgentReport) -> ReportAck:
            raise ControllerUnreachableError("the link is down")

    syncer.client = Unreachable()  # type: ignore[assignment]
    assert cache.hold(ArtifactKind.IMAGE, "a" * 64)  # being used: pinned, 95 % of the budget
    with pytest.raises(ControllerUnreachableError):
        asyncio.run(syncer.report_once())
    assert alarms.is_active(store, "site.cache-full")  # raised while offline

    syncer.client = client  # type: ignore[assignment]
    cache.hold(ArtifactKind.IMAGE, "b" * 64)
    cache.release(ArtifactKind.IMAGE, "a" * 64)  # 88 %: under the mark, not 5 points under
    asyncio.run(syncer.report_once())
    assert alarms.is_active(store, "site.cache-full")
    cache.release(ArtifactKind.IMAGE, "b" * 64)
    asyncio.run(syncer.report_once())
    assert not alarms.is_active(store, "site.cache-full")
    assert _cache_alarm_states(client) == ["raise", "clear"]
