"""What checking a client token costs a site: sign, verify, and the site-local API's check.

All in this process, with no controller anywhere: the site's check reads the public keys
from a real agent store (SQLite, WAL) and verifies the EdDSA signature. Each operation is
timed one call at a time; prints median, p99 and max in microseconds and writes
bench/results/client_token.json. Target: the site's check under 1 ms.

    .venv/bin/python bench/client_token.py --iterations 5000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from cloudlet.agent import desired
from cloudlet.agent.client_auth import ClientAuth
from cloudlet.agent.local_api import create_app
from cloudlet.agent.store import Store
from cloudlet.schemas import DesiredInstance, DesiredStateDoc
from cloudlet.tokens import SigningKey, Verifier

RESULTS = Path(__file__).parent / "results" / "client_token.json"
TARGET_US = 1000.0


Samples = tuple[list[float], list[float]]  # wall, CPU (us)


def _timed(fn: Callable[[], object], n: int) -> Samples:
    for _ in range(min(200, n)):  # warm up
        fn()
    wall, cpu = [], []
    for _ in range(n):
        c0, t0 = time.thread_time_ns(), time.perf_counter_ns()
        fn()
        wall.append((time.perf_counter_ns() - t0) / 1000)
        cpu.append((time.thread_time_ns() - c0) / 1000)
    return wall, cpu


def _stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median_us": round(statistics.median(ordered), 1),
        "p99_us": round(ordered[int(len(ordered) * 0.99) - 1], 1),
        "max_us": round(ordered[-1], 1),
    }


def _row(name: str, samples: Samples) -> dict[str, Any]:
    wall, cpu = samples
    return {"operation": name, "n": len(wall), "wall": _stats(wall), "cpu": _stats(cpu)}


def _site_store(path: Path, key: SigningKey) -> Store:
    store = Store.open(path)
    template = DesiredInstance.model_validate(
        {
            "id": "c1", "name": "maps-c1", "app": "maps", "project": "fire",
            "desired_state": "running", "components": [{"command": ["true"]}],
            "resources": {}, "revision": 1,
        }
    )  # fmt: skip
    doc = DesiredStateDoc(
        site="lyon", revision=1, full=True, since=0, instances=[template],
        client_keys=[key.public, SigningKey.generate().public],  # a rotation's two keys
    )  # fmt: skip
    desired.apply_doc(store, doc)
    return store


def _api_request(store: Store, token: str, n: int) -> Samples:
    """Whole requests to the local API (in-process ASGI, no sockets) that stop right after
    the check: a token that does not name the app asked for (403)."""
    app = create_app(store, lambda: {}, token="clt_local_bench-operator-token")
    headers = {"authorization": f"Bearer {token}"}
    body = {"app": "radio"}

    async def run() -> Samples:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://site") as client:
            for _ in range(min(200, n)):
                await client.post("/v1/local/instances", json=body, headers=headers)
            wall, cpu = [], []
            for _ in range(n):
                c0, t0 = time.thread_time_ns(), time.perf_counter_ns()
                r = await client.post("/v1/local/instances", json=body, headers=headers)
                wall.append((time.perf_counter_ns() - t0) / 1000)
                cpu.append((time.thread_time_ns() - c0) / 1000)
                assert r.status_code == 403, r.text
            return wall, cpu

    return asyncio.run(run())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=5000)
    args = parser.parse_args()
    n = args.iterations
    key = SigningKey.generate()
    token, _ = key.sign("fire", ["maps"], 8 * 3600, subject="tablet-7")
    verifier = Verifier([key.public])
    load_before = os.getloadavg()[0]
    rows = [
        _row("sign", _timed(lambda: key.sign("fire", ["maps"], 8 * 3600), n)),
        _row("verify", _timed(lambda: verifier.verify(token), n)),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        store = _site_store(Path(tmp) / "agent.db", key)
        try:
            auth = ClientAuth(store, "clt_local_bench-operator-token")
            header = f"Bearer {token}"

            def check() -> None:
                caller = auth.caller(header)
                assert caller.client is not None
                caller.client.require_app("maps")

            rows.append(_row("verify + site check (keys from the store)", _timed(check, n)))
            rows.append(
                _row("local API request, refused after the check", _api_request(store, token, n))
            )
        finally:
            store.close()
    check = rows[2]
    met = check["cpu"]["p99_us"] < TARGET_US and check["wall"]["median_us"] < TARGET_US
    result = {
        "iterations": n,
        "cpus": os.cpu_count(),
        "load_1m_before": round(load_before, 2),
        "load_1m_after": round(os.getloadavg()[0], 2),
        "token_bytes": len(token),
        "rows": rows,
        "target_us": TARGET_US,
        "site_check_met": met,
    }
    head = ("wall med", "wall p99", "wall max", "cpu med", "cpu p99", "cpu max")
    print(f"{'operation (us)':<45} {'n':>6} " + " ".join(f"{h:>9}" for h in head))
    for r in rows:
        cells = [r[k][s] for k in ("wall", "cpu") for s in ("median_us", "p99_us", "max_us")]
        print(f"{r['operation']:<45} {r['n']:>6} " + " ".join(f"{c:>9}" for c in cells))
    print(
        f"token {len(token)} bytes; load {result['load_1m_before']} -> "
        f"{result['load_1m_after']} on {result['cpus']} CPUs; target (site check: CPU p99 "
        f"and wall median < {TARGET_US:.0f} us): {'met' if met else 'MISSED'}"
    )
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
