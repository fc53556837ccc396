"""The invariants every partition scenario and the chaos run check, in one place.

- **Events, exactly once**: the site's own log of the sequence numbers it handed
  out (``event_log`` in its store) against the controller's ``events`` table. An
  event is *lost* if the site logged it, no longer holds it in its outbox, and the
  controller has no row for it (or, for a record folded past the outbox cap, none
  for the record it went into); *duplicated* if the controller holds the same
  event (kind, instance, time, data) under two sequence numbers.
- **Usage, neither overlapping nor gapped**: per instance, the usage intervals the
  controller holds follow each other; a gap is allowed only inside a window the
  scenario names (its workloads were down).
- **Workloads kept serving**: :class:`Probe` asks each endpoint every 100 ms and
  counts misses.
- **Convergence**: :func:`converge` measures the time from a restored link to the
  site being online and in sync, with the instances named running.

Both databases are read directly, as SQLite files: the site's in one snapshot (its
log, then its outbox), then the controller's, so an event acknowledged in between
is still counted as pending, never as lost.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

__all__ = ["EventTally", "Probe", "UsageTally", "check_events", "check_usage", "converge"]


def _ro(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    conn.row_factory = sqlite3.Row
    return conn


@dataclass
class EventTally:
    """What one site recorded and what the controller holds of it."""

    site: str
    recorded: int = 0  # sequence numbers the site logged
    folded: int = 0  # of which folded into another record past the outbox cap
    pending: int = 0  # still in the site's outbox
    delivered: int = 0  # rows the controller holds for this site
    duplicated: int = 0
    lost: int = 0
    unexpected: int = 0  # rows at the controller the site never logged
    lost_seqs: list[int] = field(default_factory=list)

    def ok(self) -> bool:
        return self.lost == self.duplicated == self.unexpected == 0

    def __add__(self, other: EventTally) -> EventTally:
        out = EventTally("all")
        for name in ("recorded", "folded", "pending", "delivered", "duplicated", "lost"):
            setattr(out, name, getattr(self, name) + getattr(other, name))
        out.unexpected = self.unexpected + other.unexpected
        return out


def _controller_rows(controller_db: Path, site: str) -> list[sqlite3.Row]:
    with _ro(controller_db) as conn:
        found = conn.execute("SELECT id FROM sites WHERE name = ?", (site,)).fetchone()
        if found is None:
            return []
        return conn.execute(
            "SELECT seq, kind, instance_id, at, data FROM events WHERE site_id = ?", (found["id"],)
        ).fetchall()


def check_events(site_db: Path, controller_db: Path, site: str) -> EventTally:
    """Compare the site's event log with the controller's table (see the module doc)."""
    with _ro(site_db) as conn:
        conn.execute("BEGIN")  # one snapshot: the log and the outbox agree
        log = {r["seq"]: r["merged_into"] for r in conn.execute("SELECT * FROM event_log")}
        pending = {r["seq"] for r in conn.execute("SELECT seq FROM outbox")}
        conn.execute("COMMIT")
    rows = _controller_rows(controller_db, site)
    held = {r["seq"] for r in rows}
    tally = EventTally(site, recorded=len(log), pending=len(pending), delivered=len(rows))
    for seq, into in sorted(log.items()):
        if into is not None:
            tally.folded += 1
        target = seq if into is None else into
        if target in pending or seq in pending or target in held:
            continue
        tally.lost += 1
        tally.lost_seqs.append(seq)
    tally.unexpected = len(held - set(log))
    same = Counter((r["kind"], r["instance_id"], r["at"], r["data"]) for r in rows)
    tally.duplicated = sum(n - 1 for n in same.values() if n > 1)
    return tally


@dataclass
class UsageTally:
    """The usage intervals the controller holds for one site."""

    instances: int = 0
    intervals: int = 0
    seconds: float = 0.0
    overlaps: list[tuple[str, str, str]] = field(default_factory=list)  # instance, end, start
    gaps: list[tuple[str, float, float]] = field(default_factory=list)  # instance, from, to

    def ok(self) -> bool:
        return not self.overlaps and not self.gaps


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def check_usage(
    controller_db: Path,
    site: str,
    allowed_gaps: Iterable[tuple[float, float]] = (),
    slack_s: float = 0.05,
) -> UsageTally:
    """Check the site's usage intervals per instance: no overlap, and no gap outside
    ``allowed_gaps`` (epoch-second windows when the scenario stopped its workloads)."""
    windows = list(allowed_gaps)
    per: dict[str, list[tuple[float, float, str, str]]] = {}
    for row in _controller_rows(controller_db, site):
        if row["kind"] != "usage":
            continue
        data = json.loads(row["data"]) if isinstance(row["data"], str) else row["data"]
        start, end = data["start"], data["end"]
        per.setdefault(data["instance"], []).append((_epoch(start), _epoch(end), start, end))
    tally = UsageTally(instances=len(per))
    for instance, spans in per.items():
        spans.sort()
        tally.intervals += len(spans)
        tally.seconds += sum(e - s for s, e, _, _ in spans)
        for (_, prev_end, _, prev_end_s), (start, _, start_s, _) in itertools.pairwise(spans):
            if start < prev_end - 1e-3:
                tally.overlaps.append((instance, prev_end_s, start_s))
            elif start > prev_end + slack_s and not any(
                a - slack_s <= prev_end and start <= b + slack_s for a, b in windows
            ):
                tally.gaps.append((instance, prev_end, start))
    return tally


class Probe:
    """Asks each named endpoint (``host:port``) every ``period_s`` and counts misses.

    A miss is any answer that is not a 2xx within ``timeout_s``, or no answer,
    once the endpoint has answered for the first time (a process workload is
    ``running`` once its process is, a moment before it listens). Use as a context
    manager; :meth:`set` changes an endpoint (a restarted workload listens on a new
    port) and waits for its first answer again.
    """

    def __init__(self, period_s: float = 0.1, timeout_s: float = 0.5) -> None:
        self.period_s = period_s
        self.timeout_s = timeout_s
        self.targets: dict[str, str] = {}
        self._live: set[str] = set()
        self.asked: Counter[str] = Counter()
        self.missed: Counter[str] = Counter()
        #: The first few misses: (name, seconds since the probe started, why).
        self.errors: list[tuple[str, float, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="probe", daemon=True)

    def set(self, name: str, endpoint: str) -> None:
        with self._lock:
            self.targets[name] = endpoint
            self._live.discard(name)

    def drop(self, name: str) -> None:
        with self._lock:
            self.targets.pop(name, None)

    def _run(self) -> None:
        with httpx.Client(timeout=self.timeout_s) as http:
            while not self._stop.is_set():
                began = time.monotonic()
                with self._lock:
                    targets = dict(self.targets)
                for name, endpoint in targets.items():
                    why = ""
                    try:
                        answer = http.get(f"http://{endpoint}/")
                        if not answer.is_success:
                            why = f"HTTP {answer.status_code}"
                    except httpx.HTTPError as exc:
                        why = f"{type(exc).__name__}: {exc}"
                    with self._lock:
                        if self.targets.get(name) != endpoint:
                            continue  # dropped or moved while asked: not a miss
                        if not why:
                            self._live.add(name)
                        if name not in self._live:
                            continue
                        self.asked[name] += 1
                        if why:
                            self.missed[name] += 1
                            if len(self.errors) < 20:
                                self.errors.append((name, time.monotonic() - self._t0, why))
                self._stop.wait(max(0.0, self.period_s - (time.monotonic() - began)))

    def misses(self) -> int:
        with self._lock:
            return sum(self.missed.values())

    def __enter__(self) -> Probe:
        self._t0 = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def converge(
    view: Callable[[], dict[str, Any]],
    instances: Callable[[], dict[str, str]],
    running: Iterable[str],
    *,
    since: float,
    timeout: float = 60.0,
) -> float:
    """Seconds from ``since`` (a ``time.monotonic()``) until the site is online and in
    sync and every instance in ``running`` (ids) is running at the controller.

    Args:
        view: the controller's view of the site (``/v1/sites/NAME``).
        instances: instance id -> actual state, as the controller shows them.

    Raises:
        TimeoutError: not converged within ``timeout`` seconds of now.
    """
    want = set(running)
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            site = view()
            states = instances()
            last = (site.get("availability"), site.get("sync_status"), states)
            if (
                site["availability"] == "online"
                and site["sync_status"] == "in-sync"
                and all(states.get(i) == "running" for i in want)
            ):
                return time.monotonic() - since
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.05)
    raise TimeoutError(f"not converged after {timeout:g}s: {last}")
