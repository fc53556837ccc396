"""instance.crash-loop at the site: restart count shown, one raise, one clear, no storm."""

from __future__ import annotations

import asyncio

from agent_fakes import doc, instance

from cloudlet.agent import actual, alarms, desired, outbox
from cloudlet.agent._crash_loop import CRASH_LOOP, CrashWatch
from cloudlet.agent.reconciler import Reconciler
from cloudlet.agent.store import Store
from cloudlet.compute import FakeDriver
from cloudlet.schemas import ActualState, EventKind
from cloudlet.schemas.alarms import AlarmSignal


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _pass(rec: Reconciler) -> actual.ActualRow:
    asyncio.run(rec.reconcile_once())
    row = actual.get(rec.store, "i1")
    assert row is not None
    return row


def _signals(store: Store) -> list[tuple[str, str, str | None]]:
    out = []
    for e in outbox.pending(store, 1000):
        signal = AlarmSignal.parse(e.data) if e.kind is EventKind.ALARM else None
        if signal is not None:
            out.append((signal.alarm_id, signal.state.value, e.instance))
    return out


def test_a_crash_loop_raises_once_reads_starting_and_clears_once_stable(store: Store) -> None:
    clock, driver = Clock(), FakeDriver()
    rec = Reconciler(store, driver, crashes=CrashWatch(store, stable_s=30, clock=clock))
    desired.apply_doc(store, doc(1, [instance("i1")], full=True))
    assert _pass(rec).state is ActualState.RUNNING
    for _ in range(3):
        driver.simulate_exit("i1-main", 1)  # the driver restarts it each time
    row = _pass(rec)
    assert row.crash_restarts == 3
    assert row.to_wire().crash_restarts == 3
    assert row.state is ActualState.STARTING and "crash loop" in (row.reason or "")
    clock.now += 10
    _pass(rec)  # still within the hold: nothing new
    assert _signals(store) == [(CRASH_LOOP, "raise", "i1")]
    clock.now += 30
    row = _pass(rec)
    assert row.state is ActualState.RUNNING
    assert _signals(store) == [(CRASH_LOOP, "raise", "i1"), (CRASH_LOOP, "clear", "i1")]
    assert not alarms.is_active(store, CRASH_LOOP, instance="i1")
    # The count stays at 3, but quiet: no second raise.
    clock.now += 100
    _pass(rec)
    assert len(_signals(store)) == 2


def test_deleting_a_crash_looping_instance_clears_its_alarm(store: Store) -> None:
    clock, driver = Clock(), FakeDriver()
    rec = Reconciler(store, driver, crashes=CrashWatch(store, stable_s=30, clock=clock))
    desired.apply_doc(store, doc(1, [instance("i1")], full=True))
    _pass(rec)
    for _ in range(4):
        driver.simulate_exit("i1-main", 1)
    _pass(rec)
    desired.apply_doc(store, doc(2, [instance("i1", revision=2, state="deleted")], since=1))
    _pass(rec)
    assert _signals(store) == [(CRASH_LOOP, "raise", "i1"), (CRASH_LOOP, "clear", "i1")]
    assert alarms.active(store) == []


def test_site_alarms_are_raised_and_cleared_once(store: Store) -> None:
    from cloudlet.schemas.alarms import AlarmSeverity

    assert alarms.raise_alarm(store, "site.disk-low", AlarmSeverity.MINOR, "95%")
    assert not alarms.raise_alarm(store, "site.disk-low", AlarmSeverity.MINOR, "96%")
    assert alarms.clear_alarm(store, "site.disk-low")
    assert not alarms.clear_alarm(store, "site.disk-low")
    assert _signals(store) == [("site.disk-low", "raise", None), ("site.disk-low", "clear", None)]


def test_compaction_keeps_raises_and_clears_in_order(store: Store) -> None:
    from cloudlet.schemas.alarms import AlarmSeverity

    for _ in range(3):
        alarms.raise_alarm(store, "site.disk-low", AlarmSeverity.MINOR, "95%")
        alarms.clear_alarm(store, "site.disk-low")
    for _ in range(12):
        outbox.record(store, EventKind.ALARM, data={"severity": "warning", "message": "same"})
    assert outbox.compact(store, cap=10) == 11
    states = [s for _, s, _ in _signals(store)]
    assert states == ["raise", "clear"] * 3
