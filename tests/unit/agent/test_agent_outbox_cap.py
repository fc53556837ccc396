"""The outbox's cap policy and the site's own event log: fold, never drop, and count."""

from __future__ import annotations

from cloudlet.agent import outbox, usage
from cloudlet.agent.store import Store
from cloudlet.schemas import EventKind


def _usage(store: Store, instance: str, start: float, end: float) -> None:
    with store.transaction() as conn:
        usage.append_interval(conn, instance, "app", "admin", start, end)


def test_event_log_keeps_every_seq_after_ack(store: Store) -> None:
    seqs = [outbox.record(store, EventKind.ALARM, data={"message": str(n)}) for n in range(3)]
    outbox.ack(store, 3)
    logged = [row["seq"] for row in store.query("SELECT seq FROM event_log ORDER BY seq")]
    assert logged == seqs and outbox.depth(store) == 0


def test_under_the_cap_nothing_is_folded(store: Store) -> None:
    for n in range(5):
        _usage(store, "i1", 100.0 + n, 101.0 + n)
    assert outbox.compact(store, cap=5) == 0
    assert outbox.depth(store) == 5


def test_back_to_back_usage_is_merged_with_every_second_kept(store: Store) -> None:
    for n in range(10):
        _usage(store, "i1", 100.0 + n, 101.0 + n)
        _usage(store, "i2", 100.0 + 2 * n, 102.0 + 2 * n)
    _usage(store, "i1", 200.0, 201.5)  # after a gap: a run of its own
    outbox.record(store, EventKind.INSTANCE_STATE, instance="i1", data={"state": "running"})

    folded = outbox.compact(store, cap=10)

    assert folded == 9 + 9
    events = outbox.pending(store)
    by_instance = {}
    for e in events:
        if e.kind is EventKind.USAGE:
            by_instance.setdefault(e.instance, []).append(e.data)
    assert [(d["seconds"], d.get("records", 1)) for d in by_instance["i1"]] == [
        (10.0, 10),
        (1.5, 1),
    ]
    assert [(d["seconds"], d.get("records", 1)) for d in by_instance["i2"]] == [(20.0, 10)]
    assert by_instance["i2"][0]["start"].startswith("1970-01-01T00:01:40")
    assert [e.kind for e in events].count(EventKind.INSTANCE_STATE) == 1  # lifecycle kept
    alarm = next(e for e in events if e.kind is EventKind.ALARM)
    assert alarm.data["folded"] == 18 and outbox.compacted(store) == 18
    # The site's log says where each folded record went, and the target is still pending.
    merged = store.query("SELECT seq, merged_into FROM event_log WHERE merged_into IS NOT NULL")
    assert len(merged) == 18
    assert {row["merged_into"] for row in merged} <= {e.seq for e in events}


def test_repeated_alarms_fold_into_the_newest_with_a_count(store: Store) -> None:
    for _ in range(6):
        outbox.record(store, EventKind.ALARM, instance="i1", data={"message": "disk slow"})
    outbox.record(store, EventKind.ALARM, instance="i1", data={"message": "other"})
    assert outbox.compact(store, cap=3) == 5
    alarms = [e.data for e in outbox.pending(store) if e.kind is EventKind.ALARM]
    assert {"message": "disk slow", "repeats": 6} in alarms
    assert outbox.compacted(store) == 5


def test_replay_requeues_what_was_acked_but_not_what_was_folded(store: Store) -> None:
    for n in range(4):
        _usage(store, "i1", 100.0 + n, 101.0 + n)
    outbox.compact(store, cap=2)  # seqs 1-3 fold into 4; 5 is the alarm
    outbox.ack(store, 5)
    assert outbox.depth(store) == 0
    assert outbox.replay(store) == 2
    again = outbox.pending(store)
    assert [e.seq for e in again] == [4, 5]
    assert again[0].data["seconds"] == 4.0  # the folded record, as it was sent
    assert outbox.replay(store) == 0  # nothing twice


def test_what_was_sent_once_is_never_folded(store: Store) -> None:
    for n in range(6):
        _usage(store, "i1", 100.0 + n, 101.0 + n)
    # Seqs 1-3 went out in a report that got no answer: the controller may hold them.
    assert outbox.compact(store, cap=2, after=3) == 2  # 4, 5 fold into 6
    data = {e.seq: e.data for e in outbox.pending(store) if e.kind is EventKind.USAGE}
    assert sorted(data) == [1, 2, 3, 6]
    assert data[6]["start"] == data[3]["end"]  # no second counted twice


def test_an_ack_drops_only_what_its_report_sent(store: Store) -> None:
    for n in range(3):
        outbox.record(store, EventKind.ALARM, data={"message": str(n)})
    outbox.ack(store, 3)
    sent = [outbox.record(store, EventKind.ALARM, data={"message": "x"})]  # seq 4, in flight
    assert outbox.replay(store) == 3  # meanwhile: the controller went back
    assert outbox.ack(store, 4, sent=sent) == 1
    assert [e.seq for e in outbox.pending(store)] == [1, 2, 3]  # still to send
