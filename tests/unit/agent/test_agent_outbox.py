"""The outbox: sequence numbers never reused, acks drop only what they cover, atomicity."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudlet.agent import actual, outbox
from cloudlet.agent.store import Store
from cloudlet.schemas import ActualState, EventKind, InstanceOrigin


def test_seq_increases_and_is_never_reused(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "a.db")
    seqs = [outbox.record(store, EventKind.ALARM, data={"n": n}) for n in range(3)]
    assert seqs == [1, 2, 3]
    assert outbox.ack(store, 3) == 3
    assert outbox.depth(store) == 0
    store.close()
    store = Store.open(tmp_path / "a.db")
    assert outbox.record(store, EventKind.ALARM) == 4
    store.close()


def test_ack_drops_only_up_to_acked_seq(store: Store) -> None:
    for n in range(5):
        outbox.record(store, EventKind.ALARM, data={"n": n})
    assert outbox.ack(store, 2) == 2
    pending = outbox.pending(store)
    assert [e.seq for e in pending] == [3, 4, 5]
    assert [e.data["n"] for e in pending] == [2, 3, 4]
    assert outbox.ack(store, 0) == 0
    assert outbox.depth(store) == 3


def test_pending_is_oldest_first_and_bounded(store: Store) -> None:
    for _ in range(7):
        outbox.record(store, EventKind.ALARM)
    assert [e.seq for e in outbox.pending(store, limit=4)] == [1, 2, 3, 4]


def test_rolled_back_append_uses_no_seq(store: Store) -> None:
    with pytest.raises(RuntimeError), store.transaction() as conn:
        outbox.append(conn, EventKind.ALARM)
        raise RuntimeError("crash mid-transaction")
    assert outbox.depth(store) == 0
    assert outbox.record(store, EventKind.ALARM) == 1


def test_state_change_and_its_event_commit_together(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    row = actual.create(
        store, instance_id="i1", name="n", app="a", project="p", origin=InstanceOrigin.CONTROLLER
    )
    assert outbox.depth(store) == 1

    def broken_append(*args: object, **kwargs: object) -> int:
        raise OSError("disk full")

    monkeypatch.setattr(outbox, "append", broken_append)
    with pytest.raises(OSError):
        actual.transition(store, row, ActualState.STARTING)
    monkeypatch.undo()
    # Neither the new state nor an event: the UPDATE before the append was rolled back.
    assert actual.get(store, "i1").state is ActualState.PENDING  # type: ignore[union-attr]
    assert outbox.depth(store) == 1
    actual.transition(store, row, ActualState.STARTING)
    events = outbox.pending(store)
    assert [e.data["state"] for e in events] == ["pending", "starting"]
    assert events[1].data["previous"] == "pending"


def test_pending_stays_within_a_byte_budget_but_always_sends_one(store: Store) -> None:
    for _ in range(5):
        outbox.record(store, EventKind.ALARM, data={"message": "x" * 10_000})
    assert [e.seq for e in outbox.pending(store, max_bytes=25_000)] == [1, 2]
    assert [e.seq for e in outbox.pending(store, max_bytes=100)] == [1]


def test_refused_events_are_dropped_by_seq(store: Store) -> None:
    for _ in range(3):
        outbox.record(store, EventKind.ALARM, data={})
    assert outbox.drop(store, [2]) == 1
    assert [e.seq for e in outbox.pending(store)] == [1, 3]
