"""fire-watch: wildfire risk from a site's weather sensors, served as JSON on $PORT.

A real-time edge service: firefighters' tablets near the site ask it for the current
risk and must get an answer in a few milliseconds, with or without the WAN. Sensor
readings are simulated (a seeded random walk per sensor); the risk is the Angström
index, I = H/20 + (27 - T)/10 with H the relative humidity in % and T the air
temperature in °C: below 2.0 fire is very likely, above 4.0 unlikely.

GET /        -> {"zone", "instance", "at", "sensors": [...], "level", "min_index"}
GET /healthz -> {"status": "ok"}

Standard library only; stops cleanly on SIGTERM.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SENSORS = 4
LEVELS = ((2.0, "very-high"), (2.5, "high"), (3.0, "moderate"), (4.0, "low"))


def angstrom(temp_c: float, humidity_pct: float) -> float:
    return humidity_pct / 20 + (27 - temp_c) / 10


def level(index: float) -> str:
    for bound, name in LEVELS:
        if index < bound:
            return name
    return "very-low"


class Sensors:
    """A random walk per sensor around a summer afternoon, somewhere in the south-east."""

    def __init__(self, seed: str) -> None:
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.state = [
            {"temp_c": self.rng.uniform(16, 31), "humidity_pct": self.rng.uniform(30, 85)}
            for _ in range(SENSORS)
        ]

    def read(self) -> list[dict[str, Any]]:
        with self.lock:
            out = []
            for i, s in enumerate(self.state):
                s["temp_c"] = min(42.0, max(15.0, s["temp_c"] + self.rng.gauss(0, 0.3)))
                s["humidity_pct"] = min(90.0, max(5.0, s["humidity_pct"] + self.rng.gauss(0, 1)))
                index = angstrom(s["temp_c"], s["humidity_pct"])
                out.append(
                    {
                        "sensor": f"s{i + 1}",
                        "temp_c": round(s["temp_c"], 1),
                        "humidity_pct": round(s["humidity_pct"], 1),
                        "wind_kmh": round(self.rng.uniform(5, 45), 1),
                        "index": round(index, 2),
                        "level": level(index),
                    }
                )
            return out


def make_handler(zone: str, instance: str, sensors: Sensors) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/healthz":
                self._json(200, {"status": "ok"})
            elif self.path in ("/", "/risk"):
                readings = sensors.read()
                worst = min(r["index"] for r in readings)
                body = {
                    "zone": zone,
                    "instance": instance,
                    "at": time.time(),
                    "sensors": readings,
                    "min_index": worst,
                    "level": level(worst),
                }
                self._json(200, body)
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
            pass  # one line per request would drown the agent's log

    return Handler


def main() -> int:
    port = int(os.environ.get("PORT", "8000"))
    host = os.environ.get("HOST", "127.0.0.1")
    instance = os.environ.get("CLOUDLET_INSTANCE", "local")
    zone = os.environ.get("FIRE_WATCH_ZONE", "unknown")
    server = ThreadingHTTPServer((host, port), make_handler(zone, instance, Sensors(instance)))
    server.daemon_threads = True

    def on_term(signum: int, frame: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_term)
    print(f"fire-watch {instance} serving on http://{host}:{port}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
