"""CLI start-up bench: wall time of `cloudlet --help` and list commands against a real controller.

Starts one controller on a free loopback port, runs each command ``--runs`` times
without a terminal (as a script would) and reports the median and the best wall
time, beside `python -c pass` (the interpreter's own floor) and the time the
controller took to answer the list's request (from the server's view, so what is
left is the command's own overhead). Writes bench/results/cli_startup.json, or
the file named by ``--out``; ``--label`` names the run so runs merge into one file.

``--baseline-src DIR`` (the ``src`` of another revision, e.g. from ``git archive``)
also times that revision's CLI, interleaved run by run with this one's so that both
see the same load on a shared machine, and stores it as ``<label>-baseline``.

    git archive e5ac473 src | tar -x -C /tmp/before
    .venv/bin/python bench/cli_startup.py --baseline-src /tmp/before/src
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


def _time(argv: list[str], envs: dict[str, dict[str, str]], runs: int) -> dict[str, list[float]]:
    """Seconds per run of ``argv`` under each environment, the environments interleaved."""
    times: dict[str, list[float]] = {name: [] for name in envs}
    for _ in range(runs):
        for name, env in envs.items():
            started = time.perf_counter()
            proc = subprocess.run(argv, env=env, capture_output=True, stdin=subprocess.DEVNULL)
            times[name].append(time.perf_counter() - started)
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
    parser.add_argument("--baseline-src", type=Path, help="Another revision's src/ to compare.")
    args = parser.parse_args()

    cloudlet = str(Path(sys.executable).with_name("cloudlet"))
    with tempfile.TemporaryDirectory() as tmp:
        ctl = LocalController(Path(tmp) / "ctl", insecure=True).start()
        try:
            env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDLET_")}
            env |= {
                "CLOUDLET_URL": ctl.url,
                "CLOUDLET_TOKEN_FILE": str(ctl.data_dir / "admin.token"),
            }
            envs = {args.label: env}
            if args.baseline_src is not None:
                baseline = str(args.baseline_src.resolve())
                envs[f"{args.label}-baseline"] = env | {"PYTHONPATH": baseline}
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
            rows: dict[str, dict[str, dict[str, float]]] = {name: {} for name in envs}
            for case, (argv, path) in cases.items():
                times = _time(argv, envs, args.runs)
                request = _request_s(ctl.url, ctl.token, path, args.runs) if path else 0.0
                for name, samples in times.items():
                    median = statistics.median(samples)
                    rows[name][case] = {
                        "median_s": round(median, 4),
                        "best_s": round(min(samples), 4),
                        "request_s": round(request, 4),
                        "own_s": round(median - request, 4),
                    }
        finally:
            ctl.stop()

    data = json.loads(args.out.read_text()) if args.out.exists() else {}
    for name, table in rows.items():
        print(f"CLI start-up ({name}, {args.runs} runs each, no terminal)")
        print(f"{'command':<24} {'median s':>9} {'best s':>8} {'request s':>10} {'own s':>7}")
        for case, row in table.items():
            print(
                f"{case:<24} {row['median_s']:>9.3f} {row['best_s']:>8.3f} "
                f"{row['request_s']:>10.4f} {row['own_s']:>7.3f}"
            )
        data[name] = {
            "runs": args.runs,
            "load_1m": round(os.getloadavg()[0], 2),
            "python": sys.version.split()[0],
            "src": str(args.baseline_src) if name != args.label else "this checkout",
            "commands": table,
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
