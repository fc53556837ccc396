"""Discovery bench: how long the controller takes to rank a fleet's sites for one client.

Fills a controller database with N sites (random positions over Europe, capacity,
utilization, a reported cache for a tenth of them, all online), one VM app with a
latency bound and one without, two running instances of them per site with phase
timings (2N instances), then asks a real controller process
``GET /v1/discover?app=&lat=&lon=`` from random client positions. Reports the
controller's ranking time (``elapsed_ms`` in each answer), the round trip the client
sees (it includes the fleet snapshot's rebuild, at most every 2 s), and what one
rebuild costs; prints a table and writes bench/results/discover.json.

    .venv/bin/python bench/discover.py --sites 10000
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from cloudlet.controller.app import open_state
from cloudlet.controller.db.models import App, Image, Instance, Site, SiteCache
from cloudlet.controller.services._snapshot import build
from cloudlet.settings import ControllerSettings
from cloudlet.testbed.local import LocalController

console = Console()
RESULTS = Path(__file__).resolve().parent / "results" / "discover.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sites", type=int, default=10_000)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, default=RESULTS)
    return p.parse_args(argv)


def fill(data_dir: Path, n: int, rng: random.Random) -> None:
    """Write the fleet straight into the controller's database (as enrolled sites)."""
    st = open_state(ControllerSettings(data_dir=data_dir))
    now = datetime.now(UTC)
    digest = "ab" * 32
    with st.sessions.begin() as session:
        base = Image(digest=digest, project="admin", name="base", size=2 << 30, created_at=now)
        session.add(base)
        for name, bound in (("near-app", 20), ("any-app", None)):
            session.add(
                App(
                    id=name, project="admin", name=name, description="", labels={},
                    constraints=[], latency_bound_ms=bound, created_at=now,
                    components=[{"name": "main", "kind": "vm", "image": digest}],
                    resources={"vcpus": 1, "memory_mib": 512, "disk_gib": 2},
                )
            )  # fmt: skip
        instances = []
        for i in range(n):
            site_id = f"site-{i:05d}"
            session.add(
                Site(
                    id=site_id, name=site_id, region=f"r{i % 50}",
                    latitude=rng.uniform(36, 60), longitude=rng.uniform(-9, 30), labels={},
                    state="active", revision=0, revision_changed_at=now, tombstone_floor=0,
                    applied_revision=0, acked_seq=0, last_seen=now, availability="online",
                    capacity={"vcpus": 16, "memory_mib": 65536, "disk_gib": 1000},
                    utilization={"cpu": rng.random(), "memory": rng.random(), "disk": 0.3},
                    created_at=now, local_api_url=f"http://10.{i // 256 % 256}.{i % 256}.1:9000",
                )
            )  # fmt: skip
            if i % 10 == 0:
                entry = {"digest": digest, "kind": "image", "size": 2 << 30, "complete": True}
                session.add(SiteCache(site_id=site_id, entries=[entry], reported_at=now))
            # Two running instances per site with phase timings, as a busy fleet has:
            # the warmth estimate reads every instance's timings.
            for k, app in enumerate(("near-app", "any-app")):
                instances.append(
                    Instance(
                        id=f"{site_id}-{k}", project="admin", name=f"{app}-{i}", app_id=app,
                        site_id=site_id, origin="controller", desired_state="running",
                        revision=1, actual_state="running", endpoint=f"10.0.0.1:{8000 + k}",
                        timings={"fetch": rng.uniform(1, 20), "synthesize": rng.uniform(0.2, 2),
                                 "first_answer": rng.uniform(0.2, 1)},
                        created_at=now, updated_at=now,
                    )
                )  # fmt: skip
        session.flush()  # the sites and apps the instances point at
        session.add_all(instances)
    st.close()


def snapshot_build_ms(data_dir: Path) -> float:
    """What one rebuild of the fleet snapshot costs (done at most every 2 s)."""
    st = open_state(ControllerSettings(data_dir=data_dir))
    try:
        with st.sessions() as session:
            t0 = time.perf_counter()
            build(session, 3600)
            return round((time.perf_counter() - t0) * 1000, 1)
    finally:
        st.close()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="cloudlet-discover-"))
    rows = []
    try:
        fill(tmp / "ctl", args.sites, rng)
        build_ms = snapshot_build_ms(tmp / "ctl")
        # A long grace: the fleet's last_seen was written once, before the run.
        ctl = LocalController(tmp / "ctl", offline_grace_s=3600, insecure=True).start()
        try:
            with httpx.Client(base_url=ctl.url, timeout=30) as http:
                for app in ("near-app", "any-app"):
                    server, client, ranked = [], [], []
                    for q in range(args.queries + 5):
                        lat, lon = rng.uniform(40, 55), rng.uniform(-3, 20)
                        params = {"app": app, "lat": lat, "lon": lon}
                        t0 = time.perf_counter()
                        answer = http.get("/v1/discover", params=params)
                        rtt = (time.perf_counter() - t0) * 1000
                        answer.raise_for_status()
                        body = answer.json()
                        if q >= 5:  # the first few warm caches up
                            server.append(body["elapsed_ms"])
                            client.append(rtt)
                            ranked.append(len(body["sites"]))
                    rows.append(
                        {
                            "app": app, "sites": args.sites, "queries": args.queries,
                            "server_p50_ms": pct(server, 0.5), "server_p95_ms": pct(server, 0.95),
                            "server_max_ms": round(max(server), 2),
                            "client_p50_ms": pct(client, 0.5), "client_p95_ms": pct(client, 0.95),
                            "client_max_ms": round(max(client), 2),
                            "snapshot_build_ms": build_ms,
                            "ranked_mean": round(statistics.mean(ranked), 1),
                        }
                    )  # fmt: skip
        finally:
            ctl.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    table = Table(title=f"GET /v1/discover over {args.sites} sites (target: < 50 ms)")
    for col in rows[0]:
        table.add_column(col)
    for r in rows:
        table.add_row(*(str(v) for v in r.values()))
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"bench": "discover", "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
