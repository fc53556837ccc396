"""waste-route: a batch worker that plans a waste collection round over the full bins.

The batch use case: nobody waits on it, so it tolerates a latency bound of an hour
and can run at any site. It is a long-running worker rather than a job that exits:
every ``WASTE_ROUTE_INTERVAL_S`` seconds (5 by default) it reads simulated fill
levels of the bins around a depot, keeps those at least 70 % full, plans a round
from the depot through them and back (nearest neighbour, then 2-opt), writes the
result to ``route.json`` in its working directory (atomically) and serves the latest
one as JSON on $PORT.

GET /        -> {"round", "computed_at", "bins_total", "bins_full", "route", "km"}
GET /healthz -> {"status": "ok"}

Standard library only; stops cleanly on SIGTERM.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

BINS = 60
FULL = 0.7
Point = tuple[float, float]


def haversine_km(a: Point, b: Point) -> float:
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = (
        math.sin((lat2 - lat1) / 2) ** 2
        + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    )
    return 2 * 6371.0 * math.asin(math.sqrt(h))


def tour_km(points: list[Point], order: list[int]) -> float:
    return sum(haversine_km(points[a], points[b]) for a, b in itertools.pairwise(order))


def plan(points: list[Point]) -> list[int]:
    """A closed tour from point 0 (the depot) through all others and back."""
    todo = set(range(1, len(points)))
    order = [0]
    while todo:
        last = points[order[-1]]
        nxt = min(todo, key=lambda i: haversine_km(last, points[i]))
        order.append(nxt)
        todo.remove(nxt)
    order.append(0)
    improved = True
    while improved:  # 2-opt: reverse a stretch whenever that shortens the tour
        improved = False
        for i in range(1, len(order) - 2):
            for j in range(i + 1, len(order) - 1):
                a, b, c, d = (points[k] for k in (order[i - 1], order[i], order[j], order[j + 1]))
                delta = haversine_km(a, c) + haversine_km(b, d)
                if delta < haversine_km(a, b) + haversine_km(c, d) - 1e-9:
                    order[i : j + 1] = reversed(order[i : j + 1])
                    improved = True
    return order


class Planner:
    def __init__(self, depot: Point, seed: str, out: Path) -> None:
        rng = random.Random(seed)
        self.depot = depot
        self.bins = [
            {
                "id": f"bin-{i + 1:02d}",
                "at": (depot[0] + rng.uniform(-0.04, 0.04), depot[1] + rng.uniform(-0.06, 0.06)),
                "rate": rng.uniform(0.005, 0.03),  # fill per second, sped up for the demo
                "offset": rng.random(),
            }
            for i in range(BINS)
        ]
        self.out = out
        self.round = 0
        self.latest: dict[str, Any] = {"round": 0, "status": "starting"}
        self.lock = threading.Lock()

    def compute(self, now: float) -> dict[str, Any]:
        fills = {b["id"]: (b["offset"] + b["rate"] * now) % 1.0 for b in self.bins}
        full = [b for b in self.bins if fills[b["id"]] >= FULL]
        points = [self.depot, *(b["at"] for b in full)]
        order = plan(points)
        self.round += 1
        result = {
            "round": self.round,
            "computed_at": now,
            "bins_total": len(self.bins),
            "bins_full": len(full),
            "route": ["depot", *(full[k - 1]["id"] for k in order[1:-1]), "depot"],
            "km": round(tour_km(points, order), 2),
        }
        tmp = self.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(self.out)
        with self.lock:
            self.latest = result
        return result


def make_handler(planner: Planner) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/healthz":
                self._json(200, {"status": "ok"})
            elif self.path == "/":
                with planner.lock:
                    self._json(200, planner.latest)
            else:
                self._json(404, {"error": "not found"})

        def _json(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def main() -> int:
    port = int(os.environ.get("PORT", "8000"))
    host = os.environ.get("HOST", "127.0.0.1")
    interval = float(os.environ.get("WASTE_ROUTE_INTERVAL_S", "5"))
    lat, lon = (float(v) for v in os.environ.get("WASTE_ROUTE_DEPOT", "45.76,4.84").split(","))
    instance = os.environ.get("CLOUDLET_INSTANCE", "local")
    planner = Planner((lat, lon), instance, Path("route.json").resolve())
    server = ThreadingHTTPServer((host, port), make_handler(planner))
    server.daemon_threads = True
    stop = threading.Event()

    def on_term(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"waste-route {instance} serving its latest round on http://{host}:{port}", flush=True)
    try:
        while not stop.is_set():
            r = planner.compute(time.time())
            print(f"round {r['round']}: {r['bins_full']} full bins, {r['km']} km", flush=True)
            stop.wait(interval)
    finally:
        server.shutdown()
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
