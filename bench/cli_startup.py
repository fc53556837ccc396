"""CLI start-up bench: wall time of `cloudlet --help` and list commands against a real controller.

Starts one controller on a free loopback port, runs each command ``--runs`` times
without a terminal (as a script would) and reports the median and the best wall
time, beside `python -c pass` (the interpreter's own floor) and the time the
controller took to answer the list's request (from the server's view, so what is
left is the command's own overhead). Writes bench/results/cli_startup.json, or
the file named by ``--out``; ``--label`` names the run (e.g. before/after) so
runs of two revisions merge into one file.

    .venv/bin/python bench/cli_startup.py --label after
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from cloudlet.testbed.local import LocalController

RESULTS = Path(__file__).parent / "results" / "cli_startup.json"


def _time(argv: list[str], env: dict[str, str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        proc = subprocess.run(argv, env=env, capture_output=True, stdin=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
        if proc.returncode != 0:
            raise SystemExit(f"`{' '.join(argv)}` exited {proc.returncode}: {proc.stderr!r}")
    return times


def _request_s(url: str, token: str, path: str, runs: int) -> float:
    """Median seconds the controller takes to answer ``path`` over a kept connection."""
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as http:
        http.get(path).raise_for_status()
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            http.get(path).raise_for_status()
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--label", default="current")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    cloudlet = str(Path(sys.executable).with_name("cloudlet"))
    with tempfile.TemporaryDirectory() as tmp:
        ctl = LocalController(Path(tmp) / "ctl").start()
        try:
            env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDLET_")}
            env |= {
                "CLOUDLET_URL": ctl.url,
                "CLOUDLET_TOKEN_FILE": str(ctl.data_dir / "admin.token"),
            }
            http = ctl.client()
            for name in ("lyon", "nice", "lille"):
                http.post("/v1/sites", json={"name": name}).raise_for_status()
            cases = {
                "python -c pass": ([sys.executable, "-c", "pass"], None),
                "cloudlet --help": ([cloudlet, "--help"], None),
                "cloudlet site list": ([cloudlet, "site", "list"], "/v1/sites"),
                "cloudlet instance list": ([cloudlet, "instance", "list"], "/v1/instances"),
                "cloudlet event list": ([cloudlet, "event", "list"], "/v1/events"),
            }
            rows = {}
            for case, (argv, path) in cases.items():
                times = _time(argv, env, args.runs)
                request = _request_s(ctl.url, ctl.token, path, args.runs) if path else 0.0
                median = statistics.median(times)
                rows[case] = {
                    "median_s": round(median, 4),
                    "best_s": round(min(times), 4),
                    "request_s": round(request, 4),
                    "own_s": round(median - request, 4),
                }
        finally:
            ctl.stop()

    print(f"CLI start-up ({args.label}, {args.runs} runs each, no terminal)")
    print(f"{'command':<24} {'median s':>9} {'best s':>8} {'request s':>10} {'own s':>7}")
    for case, row in rows.items():
        print(
            f"{case:<24} {row['median_s']:>9.3f} {row['best_s']:>8.3f} "
            f"{row['request_s']:>10.4f} {row['own_s']:>7.3f}"
        )
    data = json.loads(args.out.read_text()) if args.out.exists() else {}
    data[args.label] = {
        "runs": args.runs,
        "load_1m": round(os.getloadavg()[0], 2),
        "python": sys.version.split()[0],
        "commands": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
