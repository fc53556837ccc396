"""What scraping /metrics costs a controller with a large fleet.

A real controller process on a database holding N sites (written straight into the
database: 10,000 enrollments are not what is measured), scraped R times. Prints the
controller's CPU per scrape (from /proc, user + system, in clock ticks of 10 ms: 10
means one tick or less) and the size of the answer; writes bench/results/metrics.json.

    .venv/bin/python bench/metrics_scrape.py --sites 10000 --scrapes 20
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import httpx
import psutil

from cloudlet.controller.db.engine import default_url, make_engine, make_sessionmaker, upgrade
from cloudlet.controller.db.models import Site
from cloudlet.controller.services._util import new_id, utcnow
from cloudlet.controller.services.auth import bootstrap
from cloudlet.testbed.local import LocalController

RESULTS = Path(__file__).parent / "results" / "metrics.json"


def populate(data_dir: Path, sites: int, seed: int = 7) -> None:
    """``sites`` sites: most online and in sync, some lagging, some offline."""
    rng = random.Random(seed)
    engine = make_engine(default_url(data_dir))
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    now = utcnow()
    with sessions.begin() as session:
        bootstrap(session, data_dir)
        rows = []
        for i in range(sites):
            revision = rng.randint(1, 50)
            lag = 0 if rng.random() < 0.9 else rng.randint(1, 200)
            offline = rng.random() < 0.05
            rows.append(
                {
                    "id": new_id(),
                    "name": f"site-{i:05d}",
                    "region": f"region-{i % 20}",
                    "labels": {},
                    "state": "active",
                    "revision": revision + lag,
                    "revision_changed_at": now,
                    "tombstone_floor": 0,
                    "applied_revision": revision,
                    "acked_seq": 0,
                    "last_seen": now - timedelta(seconds=3600 if offline else 5),
                    "availability": "online",
                    "bytes_in": 0,
                    "bytes_out": 0,
                    "created_at": now,
                }
            )
        session.execute(Site.__table__.insert(), rows)
    engine.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=10_000)
    parser.add_argument("--scrapes", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "controller"
        data_dir.mkdir()
        populate(data_dir, args.sites)
        controller = LocalController(data_dir, insecure=True).start()
        try:
            assert controller.proc is not None and controller.proc.popen is not None
            process = psutil.Process(controller.proc.popen.pid)
            headers = {"authorization": f"Bearer {controller.token}"}
            with httpx.Client(base_url=controller.url, headers=headers, timeout=30) as client:
                client.get("/metrics").raise_for_status()  # warm up
                cpu_ms, wall_ms, sizes = [], [], []
                for _ in range(args.scrapes):
                    before = process.cpu_times()
                    started = time.perf_counter()
                    response = client.get("/metrics")
                    wall_ms.append((time.perf_counter() - started) * 1000)
                    response.raise_for_status()
                    after = process.cpu_times()
                    used = (after.user - before.user) + (after.system - before.system)
                    cpu_ms.append(used * 1000)
                    sizes.append(len(response.content))
        finally:
            controller.stop()
    result = {
        "sites": args.sites,
        "scrapes": args.scrapes,
        "cpu_ms_median": round(statistics.median(cpu_ms), 1),
        "cpu_ms_max": round(max(cpu_ms), 1),
        "wall_ms_median": round(statistics.median(wall_ms), 1),
        "bytes": max(sizes),
        "targets": {"cpu_ms": 100, "bytes": 200_000},
    }
    columns = ("sites", "scrapes", "cpu_ms_median", "cpu_ms_max", "wall_ms_median", "bytes")
    print(" ".join(f"{c:>14}" for c in columns))
    print(" ".join(f"{result[c]:>14}" for c in columns))
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
