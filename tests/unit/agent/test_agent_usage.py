"""Usage records: each instance-second counted once, intervals back to back."""

from __future__ import annotations

import itertools
from datetime import datetime

from agent_fakes import doc, instance

from cloudlet.agent import actual, desired, outbox, usage
from cloudlet.agent.store import Store
from cloudlet.schemas import ActualState, EventKind, InstanceOrigin, Resources


def records(store: Store) -> list[dict[str, object]]:
    return [e.data for e in outbox.pending(store, 1000) if e.kind is EventKind.USAGE]


def test_usage_is_recorded_once_per_interval(store: Store) -> None:
    row = actual.create(
        store,
        instance_id="i1",
        name="n",
        app="web",
        project="p",
        origin=InstanceOrigin.CONTROLLER,
        now=1000.0,
    )
    row = actual.transition(store, row, ActualState.RUNNING, now=1000.0)
    assert usage.flush(store, now=1060.0) == 1
    assert usage.flush(store, now=1060.0) == 0  # nothing new since
    assert usage.flush(store, now=1090.0) == 1
    row = actual.get(store, "i1")  # type: ignore[assignment]
    actual.transition(store, row, ActualState.STOPPING, now=1100.0)
    assert usage.flush(store, now=1200.0) == 0  # not running: not billed
    recs = records(store)
    assert [r["seconds"] for r in recs] == [60.0, 30.0, 10.0]
    assert recs[0]["instance"] == "i1" and recs[0]["app"] == "web" and recs[0]["project"] == "p"
    # Back to back: each interval starts where the previous ended.
    for a, b in itertools.pairwise(recs):
        assert a["end"] == b["start"]
    assert datetime.fromisoformat(str(recs[0]["start"])).timestamp() == 1000.0


def test_a_stale_row_does_not_count_flushed_usage_twice(store: Store) -> None:
    row = actual.create(
        store,
        instance_id="i1",
        name="n",
        app="web",
        project="p",
        origin=InstanceOrigin.CONTROLLER,
        now=1000.0,
    )
    stale = actual.transition(store, row, ActualState.RUNNING, now=1000.0)
    # The usage loop records 1000..1060 while the reconciler still holds `stale`.
    usage.flush(store, now=1060.0)
    actual.transition(store, stale, ActualState.STOPPING, now=1080.0)
    assert [r["seconds"] for r in records(store)] == [60.0, 20.0]


def test_recording_usage_moves_the_open_interval_the_report_carries(store: Store) -> None:
    row = actual.create(
        store,
        instance_id="i1",
        name="n",
        app="web",
        project="p",
        origin=InstanceOrigin.CONTROLLER,
        now=1000.0,
    )
    actual.transition(store, row, ActualState.RUNNING, now=1000.0)
    version = actual.version(store)
    assert usage.flush(store, now=1060.0) == 1
    assert actual.version(store) == version + 1  # the next report sends the instances
    wire = actual.get(store, "i1").to_wire()  # type: ignore[union-attr]
    assert wire.usage_since is not None and wire.usage_since.timestamp() == 1060.0
    assert usage.flush(store, now=1060.0) == 0
    assert actual.version(store) == version + 1  # nothing recorded: nothing to resend


def test_a_record_carries_the_resources_its_definition_gives(store: Store) -> None:
    spec = instance("i1").model_copy(update={"resources": Resources(vcpus=0.5, memory_mib=2048)})
    desired.apply_doc(store, doc(1, [spec], full=True))
    row = actual.create(
        store, instance_id="i1", name="n", app="web", project="admin",
        origin=InstanceOrigin.CONTROLLER, now=1000.0,
    )  # fmt: skip
    actual.transition(store, row, ActualState.RUNNING, now=1000.0)
    usage.flush(store, now=1060.0)
    with store.transaction() as conn:  # an instance with no definition here says nothing
        usage.append_interval(conn, "gone", "web", "admin", 1000.0, 1010.0)
    first, second = records(store)
    assert (first["vcpus"], first["memory_mib"]) == (0.5, 2048)
    assert "vcpus" not in second and "memory_mib" not in second


def test_back_to_back_records_at_other_resources_are_not_merged(store: Store) -> None:
    spec = instance("i1")
    desired.apply_doc(store, doc(1, [spec], full=True))
    with store.transaction() as conn:
        usage.append_interval(conn, "i1", "web", "admin", 100.0, 110.0)
    bigger = spec.model_copy(update={"resources": Resources(vcpus=4), "revision": 2})
    desired.apply_doc(store, doc(2, [bigger], full=True))
    for n in range(2):
        with store.transaction() as conn:
            usage.append_interval(conn, "i1", "web", "admin", 110.0 + n * 10, 120.0 + n * 10)
    assert outbox.compact(store, cap=1) == 1  # the two at 4 vCPUs fold; the first stays
    assert [(r["vcpus"], r["seconds"]) for r in records(store)] == [(1.0, 10.0), (4.0, 20.0)]
