"""What metering costs the controller: storing usage records, a report, counting fetches.

In this process, on a real migrated database (SQLite by default, PostgreSQL with
--database-url): INSTANCES instances at one site each send a usage record per minute
for HOURS hours, in reports of 500 events as agents send them. Measured: the time to
ingest a report of usage events against one of lifecycle events (what the usage rows
add), the time of a report over the whole span (hour-aligned), over a span with
unaligned bounds (both list late records: every record arrived after them), and of
a period still open (none late), and one fetch-counter addition (what each sent
chunk pays). Prints a table and writes bench/results/metering-BACKEND.json.

    .venv/bin/python bench/metering.py --instances 100 --hours 24
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cloudlet.controller.db.engine import make_engine, make_sessionmaker, upgrade
from cloudlet.controller.db.models import Site
from cloudlet.controller.services import catalog, fleet, instances, prices, sync
from cloudlet.controller.services.artifact_fetches import FetchCounters
from cloudlet.controller.services.auth import bootstrap
from cloudlet.controller.services.usage_report import build_report
from cloudlet.schemas import AgentReport, AppCreate, EnrollRequest, InstanceCreate, SiteCreate
from cloudlet.schemas.metering import PricePlanSet

RESULTS = Path(__file__).parent / "results"
T0 = datetime(2026, 12, 1, tzinfo=UTC)
BATCH = 500


def _setup(url: str, data_dir: Path, count: int) -> tuple[Any, str, list[str]]:
    engine = make_engine(url)
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    with sessions.begin() as session:
        bootstrap(session, data_dir)
        _site, token = fleet.create_site(session, SiteCreate(name="lyon"))
        capacity = {"vcpus": 1024, "memory_mib": 1 << 22, "disk_gib": 1000}
        fleet.enroll(session, EnrollRequest(join_token=token.token, capacity=capacity))
        body = AppCreate(
            name="web", components=[{"command": ["true"]}], resources={"vcpus": 0.01, "disk_gib": 0}
        )
        catalog.create_app(session, "admin", body)
        ids = []
        for n in range(count):
            row, _ = instances.create_instance(
                session, "admin", InstanceCreate(app="web", site="lyon", name=f"i{n}"), 30
            )
            ids.append(row.id)
        prices.set_plan(session, "", "", PricePlanSet(currency="EUR", vcpu_hour="0.02"))
        site_id = session.query(Site.id).filter(Site.name == "lyon").scalar()
    return sessions, site_id, ids


def _events(ids: list[str], hours: int) -> list[dict[str, Any]]:
    events, seq = [], 0
    for minute in range(hours * 60):
        start, end = T0 + timedelta(minutes=minute), T0 + timedelta(minutes=minute + 1)
        for instance in ids:
            seq += 1
            data = {
                "instance": instance, "app": "web", "project": "admin", "seconds": 60.0,
                "start": start.isoformat(), "end": end.isoformat(), "vcpus": 1.0,
                "memory_mib": 256,
            }  # fmt: skip
            events.append({"seq": seq, "kind": "usage", "instance": instance, "at": end,
                           "data": data})  # fmt: skip
    return events


def _ingest(sessions: Any, site_id: str, events: list[dict[str, Any]]) -> list[float]:
    took = []
    for i in range(0, len(events), BATCH):
        report = AgentReport(applied_revision=0, events=events[i : i + BATCH])
        t0 = time.perf_counter()
        with sessions.begin() as session:
            site = session.get_one(Site, site_id)
            sync.ingest_report(session, site, report, datetime.now(UTC), max_seq_jump=1 << 40)
        took.append((time.perf_counter() - t0) * 1000)
    return took


def _timed_report(sessions: Any, since: datetime, until: datetime) -> tuple[float, Any]:
    t0 = time.perf_counter()
    with sessions() as session:
        report = build_report(session, "admin", since, until, datetime.now(UTC))
    return (time.perf_counter() - t0) * 1000, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=100)
    parser.add_argument("--hours", type=int, default=24)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{Path(tmp) / 'c.db'}"
        sessions, site_id, ids = _setup(url, Path(tmp), args.instances)
        usage = _events(ids, args.hours)
        # The same reports as lifecycle events (no usage rows): the baseline.
        lifecycle = [
            {**e, "seq": e["seq"] + len(usage), "kind": "instance.state", "data": {"state": "x"}}
            for e in usage[: BATCH * 20]
        ]
        base = _ingest(sessions, site_id, lifecycle)
        took = _ingest(sessions, site_id, usage)
        span = (T0, T0 + timedelta(hours=args.hours))
        aligned_ms, report = _timed_report(sessions, *span)
        odd = (T0 + timedelta(minutes=7, seconds=30), span[1] - timedelta(minutes=13))
        unaligned_ms, _ = _timed_report(sessions, *odd)
        # Ingested after the span ended, every record is late there; a period still
        # open (its end after every arrival) has none to list.
        open_ms, _ = _timed_report(sessions, T0, datetime.now(UTC) + timedelta(hours=1))
        counters = FetchCounters()
        key = ("admin", site_id, "overlay", "x" * 64)
        n = 200_000
        t0 = time.perf_counter()
        for _ in range(n):
            counters.add(key, 65536)
        add_us = (time.perf_counter() - t0) / n * 1e6
    hours = sum(float(line.instance_hours) for line in report.lines)
    row = {
        "backend": "postgresql" if args.database_url else "sqlite",
        "instances": args.instances,
        "records": len(usage),
        "ingest_usage_ms_per_report_median": round(statistics.median(took), 1),
        "ingest_lifecycle_ms_per_report_median": round(statistics.median(base), 1),
        "report_aligned_all_late_ms": round(aligned_ms, 1),
        "late_listed": len(report.late),
        "report_unaligned_all_late_ms": round(unaligned_ms, 1),
        "report_open_no_late_ms": round(open_ms, 1),
        "instance_hours": hours,
        "fetch_count_add_us": round(add_us, 3),
    }
    for k, v in row.items():
        print(f"{k:42} {v}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"metering-{row['backend']}.json").write_text(json.dumps(row, indent=2) + "\n")
    if abs(hours - args.instances * args.hours) > 1e-3:
        sys.exit(f"the report counted {hours} instance-hours, not {args.instances * args.hours}")


if __name__ == "__main__":
    main()
