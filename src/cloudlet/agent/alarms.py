"""Site-local alarms: raised once and cleared once, each change an outbox event, so
that what a site raised and cleared while its link was down reaches the controller
with the site's own times. The active alarms are kept in the store's ``alarms`` table.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from cloudlet.agent import outbox
from cloudlet.agent.store import Store
from cloudlet.schemas import EventKind
from cloudlet.schemas.alarms import AlarmSeverity, AlarmSignal, AlarmState


def _signal(
    alarm_id: str, state: AlarmState, severity: str, reason: str | None
) -> dict[str, object]:
    data = AlarmSignal(
        alarm_id=alarm_id, state=state, severity=AlarmSeverity(severity), reason=reason
    ).model_dump(mode="json", exclude_none=True)
    # What plain alarms (and `cloudlet event list`) call the text.
    data["message"] = f"{alarm_id} {state.value}d" + (f": {reason}" if reason else "")
    return data


def raise_alarm(
    store: Store,
    alarm_id: str,
    severity: AlarmSeverity,
    reason: str | None = None,
    *,
    instance: str | None = None,
) -> bool:
    """Raise ``alarm_id`` about the site (or one of its instances) unless it is active.

    Returns:
        True if it was raised now, False if it was active already.
    """
    now = datetime.now(UTC)
    with store.transaction() as conn:
        added = conn.execute(
            "INSERT OR IGNORE INTO alarms (alarm_id, instance, severity, reason, raised_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (alarm_id, instance or "", severity.value, reason, now.isoformat()),
        ).rowcount
        if added:
            data = _signal(alarm_id, AlarmState.RAISE, severity.value, reason)
            outbox.append(conn, EventKind.ALARM, instance=instance, data=data, at=now)
    return bool(added)


def clear_alarm(
    store: Store, alarm_id: str, reason: str | None = None, *, instance: str | None = None
) -> bool:
    """Clear the active ``alarm_id``; True if it was active (and is cleared now)."""
    now = datetime.now(UTC)
    with store.transaction() as conn:
        found = conn.execute(
            "DELETE FROM alarms WHERE alarm_id = ? AND instance = ? RETURNING severity",
            (alarm_id, instance or ""),
        ).fetchone()
        if found is not None:
            data = _signal(alarm_id, AlarmState.CLEAR, found["severity"], reason)
            outbox.append(conn, EventKind.ALARM, instance=instance, data=data, at=now)
    return found is not None


def is_active(store: Store, alarm_id: str, *, instance: str | None = None) -> bool:
    rows = store.query(
        "SELECT 1 FROM alarms WHERE alarm_id = ? AND instance = ?", (alarm_id, instance or "")
    )
    return bool(rows)


def active(store: Store) -> list[tuple[str, str | None]]:
    """The active alarms: (alarm id, instance or None)."""
    rows = store.query("SELECT alarm_id, instance FROM alarms ORDER BY raised_at")
    return [(r["alarm_id"], r["instance"] or None) for r in rows]


class ThresholdAlarm:
    """A site alarm on a measured value, with hysteresis: raised once the value reaches
    ``raise_at``, cleared once it is back to ``clear_at`` or below, so a value that
    hovers at the mark raises and clears once rather than at every measurement."""

    def __init__(
        self,
        store: Store,
        alarm_id: str,
        severity: AlarmSeverity,
        raise_at: float,
        clear_at: float,
        describe: Callable[[float], str],
    ) -> None:
        self.store = store
        self.alarm_id = alarm_id
        self.severity = severity
        self.raise_at = raise_at
        self.clear_at = clear_at
        self.describe = describe
        self._active: bool | None = None  # read from the store at the first measurement

    def observe(self, value: float) -> None:
        if self._active is None:
            self._active = is_active(self.store, self.alarm_id)
        if not self._active and value >= self.raise_at:
            raise_alarm(self.store, self.alarm_id, self.severity, self.describe(value))
            self._active = True
        elif self._active and value <= self.clear_at:
            clear_alarm(self.store, self.alarm_id, self.describe(value))
            self._active = False
