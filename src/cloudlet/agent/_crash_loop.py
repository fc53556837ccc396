"""Crash loops: an instance whose workloads keep exiting and being restarted by their
driver shows its restart count and raises instance.crash-loop instead of reading
``running``; the alarm clears once the workloads have run stably for a while, or when
the instance stops or goes away."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from cloudlet.agent import actual, alarms
from cloudlet.agent.actual import ActualRow
from cloudlet.agent.store import Store
from cloudlet.compute import WorkloadState, WorkloadStatus
from cloudlet.schemas.alarms import AlarmId, AlarmSeverity

CRASH_LOOP = AlarmId.INSTANCE_CRASH_LOOP.value


class CrashWatch:
    """Turns the drivers' restart counts into the instance.crash-loop alarm.

    The rule: the alarm is raised when the workloads were restarted ``after``
    times or more (since their last start) and the count moved within the last
    ``stable_s`` seconds; it clears once the count has not moved for ``stable_s``
    seconds while every workload runs. A workload that crashes again after that
    raises it anew, so the alarm changes at most once per ``stable_s``.
    """

    def __init__(
        self,
        store: Store,
        *,
        after: int = 3,
        stable_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.after = after
        self.stable_s = stable_s
        self.clock = clock
        #: Instance id -> time.monotonic() the restart count last moved.
        self._moved_at: dict[str, float] = {}
        #: Instances whose alarm is active: read once, so a pass neither queries nor
        #: writes the store for instances that are not looping.
        self._looping = {i for a, i in alarms.active(store) if a == CRASH_LOOP and i}

    def observe(self, row: ActualRow, statuses: Iterable[WorkloadStatus]) -> tuple[ActualRow, bool]:
        """Record the restart count of ``row``'s workloads, raise or clear the alarm.

        Returns:
            The row (its ``crash_restarts`` updated) and whether it is crash-looping.
        """
        statuses = list(statuses)
        count = sum(s.restarts for s in statuses)
        now = self.clock()
        if count != row.crash_restarts:
            row = actual.set_crash_restarts(self.store, row, count)
            self._moved_at[row.id] = now
        # Unknown (a fresh agent): as if it last moved long ago, so a loop that had
        # calmed down before the agent restarted is not raised again.
        moved_at = self._moved_at.setdefault(row.id, now - self.stable_s)
        quiet = now - moved_at >= self.stable_s
        looping = row.id in self._looping
        if not looping and count >= self.after and not quiet:
            last = next((s for s in statuses if s.restarts), None)
            code = f"; last exit code {last.exit_code}" if last and last.exit_code else ""
            reason = f"restarted {count} times{code}"
            alarms.raise_alarm(self.store, CRASH_LOOP, AlarmSeverity.MAJOR, reason, instance=row.id)
            self._looping.add(row.id)
            return row, True
        if looping and quiet and all(_runs(s) for s in statuses):
            reason = f"ran {self.stable_s:g} s without a restart"
            alarms.clear_alarm(self.store, CRASH_LOOP, reason, instance=row.id)
            self._looping.discard(row.id)
            return row, False
        return row, looping

    def forget(self, instance_id: str, reason: str) -> None:
        """The instance stopped or went away: its crash loop is over."""
        self._moved_at.pop(instance_id, None)
        if instance_id in self._looping:
            alarms.clear_alarm(self.store, CRASH_LOOP, reason, instance=instance_id)
            self._looping.discard(instance_id)


def _runs(status: WorkloadStatus) -> bool:
    return status.state is WorkloadState.RUNNING and status.pid is not None
