"""Fleet bench: how many site agents one controller process keeps in sync on this machine.

Starts a real controller (SQLite in a fresh data dir, or ``--database-url``), registers
and enrolls N sites through the API, then runs N simulated agents (bench/_fleet_agents.py,
in ``--load-workers`` child processes) that each do one sync round (report + desired
pull) every ``--interval`` seconds, while a fraction also hold long-polls open. Over a
steady-state window it measures syncs per second against the target N/interval, sync
latency percentiles, errors, and the controller's CPU and peak RSS; prints a table and
writes bench/results/fleet.json.

    .venv/bin/python bench/fleet.py --sites 1000,5000,10000
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import multiprocessing as mp
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _profile
from _fleet_agents import Plan, run_worker
from cloudlet.controller.db.engine import default_url
from cloudlet.testbed.local import LocalController, Proc, _cli, _env, wait_for

RESULTS = Path(__file__).resolve().parent / "results" / "fleet.json"
#: Seconds into the window a reconnect storm's agents go silent.
STORM_START_S = 5.0
#: File descriptors the controller keeps for itself (database, logs, listeners).
FD_RESERVE = 300

console = Console(width=200)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The bench's command line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sites", default="10000", help="site count, or a comma list: 1000,5000")
    p.add_argument("--interval", type=float, default=15.0, help="seconds between sync rounds")
    p.add_argument("--jitter", type=float, default=0.2, help="uniform jitter, +- this fraction")
    p.add_argument("--duration", type=float, default=60.0, help="seconds measured per run")
    p.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="seconds before measuring [2 x interval + 15]: time for every agent's first "
        "full pull and report, which cost more than the steady state measured",
    )
    p.add_argument(
        "--database-url",
        default=None,
        help="a scratch PostgreSQL database (emptied before each run) instead of SQLite",
    )
    p.add_argument(
        "--long-poll-fraction",
        type=float,
        default=1.0,
        help="agents that also hold a wait=25 long-poll open (capped by the fd limit)",
    )
    p.add_argument(
        "--start-revision",
        type=int,
        default=1,
        help="set every enrolled site's revision to this in the database (not via the API; "
        "0 keeps fresh sites, whose every pull is a full snapshot)",
    )
    p.add_argument("--events-fraction", type=float, default=0.05, help="reports with events")
    p.add_argument(
        "--instances-fraction", type=float, default=0.02, help="reports with an instance list"
    )
    p.add_argument(
        "--no-keepalive",
        dest="keepalive",
        action="store_false",
        help="open a new connection per sync round (as httpx does after 5 s idle)",
    )
    p.add_argument(
        "--tls",
        action="store_true",
        help="HTTPS with mutual TLS: every simulated site joins with a CSR and presents its "
        "own client certificate (default: the controller runs --insecure, plain HTTP)",
    )
    p.add_argument("--load-workers", type=int, default=2, help="load generator processes")
    p.add_argument("--workers", type=int, default=1, help="controller worker processes")
    p.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="controller processes on the one --database-url; agents are spread over them",
    )
    p.add_argument(
        "--storm",
        type=float,
        default=0.0,
        help="reconnect storm: this fraction of agents goes silent 5 s into the window "
        "for --storm-offline seconds (past the offline grace), queueing usage records, "
        "then all report their backlog at once",
    )
    p.add_argument("--storm-offline", type=float, default=45.0)
    p.add_argument("--out", type=Path, default=RESULTS, help="results JSON")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="a directory: sample the controller with py-spy during the window and "
        "write the profile there (its top entries go in the results)",
    )
    args = p.parse_args(argv)
    args.sizes = [int(s) for s in args.sites.split(",") if s.strip()]
    if args.replicas > 1 and not args.database_url:
        p.error("--replicas needs --database-url: replicas share a PostgreSQL database")
    if args.storm and args.duration < STORM_START_S + args.storm_offline + 30:
        p.error(f"--duration must cover the storm and 30 s after it ({args.storm_offline + 35:g})")
    if args.warmup is None:
        args.warmup = 2 * args.interval + 15.0
    return args


@dataclass
class BenchController(LocalController):
    """LocalController with the serve flags this bench varies."""

    workers: int = 1

    def start(self, timeout: float = 60.0) -> BenchController:
        args = _cli(
            "controller", "serve", "--port", str(self.port), "--data-dir", str(self.data_dir),
            "--offline-grace", str(self.offline_grace_s), "--log-level", "warning",
        )  # fmt: skip
        if self.workers != 1:
            args += ["--workers", str(self.workers)]
        if self.insecure:
            args.append("--insecure")
        if self.database_url:
            args += ["--database-url", self.database_url]
        self.proc = Proc(
            "controller", args, self.data_dir / "controller.log", _env(self.env)
        ).start()
        wait_for(self._healthy, timeout, f"controller on {self.url}\n{self.proc.log_tail()}")
        return self

    def kill_group(self) -> None:
        """Make sure nothing of the controller (workers included) outlives the run."""
        popen = self.proc.popen if self.proc else None
        if popen is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(popen.pid, signal.SIGKILL)


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def process_tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            t = proc.cpu_times()
            total += t.user + t.system
    return total


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent busy since boot."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def peak_rss_mb(procs: list[psutil.Process]) -> float:
    """Sum of each process's high-water RSS (VmHWM), in MB."""
    total = 0
    for proc in procs:
        with contextlib.suppress(OSError, psutil.NoSuchProcess):
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) * 1024
    return total / 1e6


def reset_database(url: str) -> None:
    """Empty a scratch PostgreSQL database so each run starts from zero sites."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


def set_revision(url: str, revision: int) -> None:
    """Put every site at ``revision`` directly in the database (labelled a shortcut).

    A fleet in steady state holds some desired state, so agents pull by a cursor
    and mostly hear "nothing changed". Placing one instance per site through the
    API costs a placement snapshot of every site per call (quadratic in sites),
    so the bench bumps the revision column instead.
    """
    from sqlalchemy import create_engine, update

    from cloudlet.controller.db.models import Site

    engine = create_engine(url)
    with engine.begin() as conn:
        # revision_changed_at stays: stamping it now would make the controller wake
        # every long poll at once, and they would stay in step from then on.
        conn.execute(update(Site).values(revision=revision))
    engine.dispose()


#: Longest the warm-up is extended while the controller still builds first snapshots.
MAX_WARMUP_EXTENSION_S = 120.0


def settle(ctrls: list[BenchController], children: list[Any], start: float, sites: int) -> float:
    """Move the window later, 5 s or more at a time, while the controller is still building
    the agents' first snapshots (a fleet's cold start, queued behind on a slow
    database): the window measures the steady state. Returns the seconds added."""
    extended = 0.0
    while extended < MAX_WARMUP_EXTENSION_S:
        time.sleep(max(0.0, start + extended - 6 - time.time()))
        before, read_at = documents_built(ctrls), time.time()
        time.sleep(max(0.0, start + extended - 2 - time.time(), read_at + 3 - time.time()))
        after = documents_built(ctrls)
        # No answer from /metrics in time: requests still queue behind the snapshots.
        if before and after and after["full"] - before["full"] < max(5.0, sites / 2000):
            return extended
        # At least 5 s later, and later still if reading /metrics took long.
        shift = max(start + extended + 5.0, time.time() + 6.0) - (start + extended)
        for _, pipe in children:
            pipe.send(shift)
        extended += shift
    return extended


def documents_built(ctrls: list[BenchController]) -> dict[str, float] | None:
    """Desired-state documents the controllers built so far, full and delta, from
    their /metrics (with --workers, only the worker that answers is counted); None
    if a controller did not answer within 10 s."""
    built: dict[str, float] = {"full": 0.0, "delta": 0.0}
    token = ctrls[0].token  # replicas share the database; only the first writes the file
    for ctrl in ctrls:
        try:
            with ctrl.client(token) as client:
                text = client.get("/metrics", timeout=10).text
        except httpx.HTTPError:
            return None
        for line in text.splitlines():
            if line.startswith("cloudlet_desired_documents_total{"):
                kind = line.split('kind="', 1)[1].split('"', 1)[0]
                built[kind] = built.get(kind, 0.0) + float(line.rsplit(" ", 1)[1])
    return built


def database_counters(url: str) -> dict[str, int]:
    """PostgreSQL's own counters for the bench database: transactions, rows written,
    WAL position (bytes) and the database's size."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT xact_commit + xact_rollback AS transactions, tup_inserted AS inserted, "
                "tup_updated AS updated, tup_deleted AS deleted, "
                "tup_returned + tup_fetched AS rows_read, "
                "pg_current_wal_lsn() - '0/0'::pg_lsn AS wal_bytes, "
                "pg_database_size(current_database()) AS size_bytes "
                "FROM pg_stat_database WHERE datname = current_database()"
            )
        ).one()
    engine.dispose()
    return {k: int(v) for k, v in row._mapping.items()}


def database_rates(
    before: dict[str, int], after: dict[str, int], syncs: int, seconds: float
) -> dict[str, float]:
    """What the window cost the database, per second and per sync (pg_stat_database's
    counters lag by up to its stats interval: a rough figure, good for a model)."""
    out: dict[str, float] = {"size_mb_at_end": round(after["size_bytes"] / 1e6, 1)}
    for key in ("transactions", "inserted", "updated", "deleted", "rows_read", "wal_bytes"):
        delta = after[key] - before[key]
        out[f"{key}_per_s"] = round(delta / seconds, 1)
        out[f"{key}_per_sync"] = round(delta / syncs, 2) if syncs else 0.0
    return out


def check_events(url: str, acked: dict[str, int]) -> dict[str, int]:
    """Usage events stored, and of those each agent had acknowledged (every sequence
    up to its last ``acked_seq``): how many are missing, and how many stored twice."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT s.name, e.seq FROM events e JOIN sites s ON s.id = e.site_id "
                "WHERE e.kind = 'usage'"
            )
        ).all()
    engine.dispose()
    stored = collections.Counter((name, seq) for name, seq in rows)
    lost = sum(
        1 for name, top in acked.items() for seq in range(1, top + 1) if (name, seq) not in stored
    )
    return {
        "events_stored": len(rows),
        "events_lost": lost,
        "events_stored_twice": sum(1 for n in stored.values() if n > 1),
    }


def storm_result(args: argparse.Namespace, stats: list[dict[str, Any]]) -> dict[str, Any]:
    recover = [v for s in stats for v in s["storm_recover_s"]]
    agents = sum(s["storm_agents"] for s in stats)
    return {
        "storm": {
            "agents": agents,
            "offline_s": args.storm_offline,
            "recovered": len(recover),
            "back_in_sync_s": percentiles(recover),
            "errors": sum(s["storm_errors"] for s in stats),
        }
    }


def fd_budget() -> int:
    """Connections the controller can hold: its fd limit (raised to the hard one)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard - FD_RESERVE


def split(n: int, parts: int) -> list[tuple[int, int]]:
    """(first, count) slices of range(n), as even as possible."""
    out, first = [], 0
    for i in range(parts):
        count = n // parts + (1 if i < n % parts else 0)
        out.append((first, count))
        first += count
    return out


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p90": None, "p99": None, "max": None}
    a = np.asarray(values)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {
        "p50": round(float(p50), 2),
        "p90": round(float(p90), 2),
        "p99": round(float(p99), 2),
        "max": round(float(a.max()), 2),
    }


def slow_seconds(timeline: list[tuple[float, float]], t0: float, over_ms: float = 200) -> str:
    """When slow syncs started, as "second:count" of the window, to spot stalls."""
    counts: dict[int, int] = {}
    for started, ms in timeline:
        if ms > over_ms:
            counts[int(started - t0)] = counts.get(int(started - t0), 0) + 1
    return " ".join(f"{s}:{n}" for s, n in sorted(counts.items()))


def ctrl_env(first_data_dir: Path) -> dict[str, str]:
    """Environment giving a replica the first controller's CA."""
    return {
        "CLOUDLET_CONTROLLER__TLS__CA_CERT_FILE": str(first_data_dir / "ca.crt"),
        "CLOUDLET_CONTROLLER__TLS__CA_KEY_FILE": str(first_data_dir / "ca.key"),
    }


def run_one(args: argparse.Namespace, sites: int) -> dict[str, Any]:
    """Start a controller, enroll ``sites`` agents, measure one steady-state window."""
    conns_per_agent = 1 if args.keepalive else 0
    budget = fd_budget()
    room = budget - sites * conns_per_agent
    long_poll_fraction = max(0.0, min(args.long_poll_fraction, room / sites))
    if long_poll_fraction < args.long_poll_fraction:
        console.print(
            f"[yellow]{sites} sites: fd limit {budget + FD_RESERVE} allows long-polls for "
            f"{long_poll_fraction:.0%} of agents, not {args.long_poll_fraction:.0%}[/]"
        )
    if args.database_url:
        reset_database(args.database_url)
    data_dir = Path(tempfile.mkdtemp(prefix="cloudlet-fleet-"))
    ctrls = [
        BenchController(
            data_dir=data_dir / f"replica-{i}" if i else data_dir,
            database_url=args.database_url,
            workers=args.workers,
            insecure=not args.tls,
            # One CA for every replica (docs/tls.md): the first's, made at its start.
            env=ctrl_env(data_dir) if i and args.tls else {},
        )
        for i in range(args.replicas)
    ]
    ctrl = ctrls[0]
    ctx = mp.get_context("spawn")
    children: list[tuple[Any, Any]] = []
    try:
        console.print(f"[bold]{sites} sites[/]: starting controller in {data_dir}")
        for replica in ctrls:  # one after another: the first migrates the database
            replica.data_dir.mkdir(parents=True, exist_ok=True)
            replica.start()
        assert ctrl.proc is not None and ctrl.proc.popen is not None
        started = time.time()
        for i, (first, count) in enumerate(split(sites, args.load_workers)):
            plan = Plan(
                host="127.0.0.1",
                port=ctrl.port,
                admin_token=ctrl.token,
                first=first,
                count=count,
                interval=args.interval,
                jitter=args.jitter,
                long_poll_fraction=long_poll_fraction,
                events_fraction=args.events_fraction,
                instances_fraction=args.instances_fraction,
                keepalive=args.keepalive,
                seed=args.seed * 1000 + i,
                storm_fraction=args.storm,
                replicas=tuple(("127.0.0.1", r.port) for r in ctrls[1:]),
                ca_file=str(ctrl.ca_file) if args.tls else None,
            )
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=run_worker, args=(plan, child), daemon=True)
            proc.start()
            children.append((proc, parent))
        ready = [_recv(proc, pipe, 1800, ctrl) for proc, pipe in children]
        setup_s = time.time() - started
        enrolled = sum(r["enrolled"] for r in ready)
        enroll_retries = sum(r["retries"] for r in ready)
        console.print(
            f"  enrolled {enrolled} sites in {setup_s:.1f}s through the API "
            f"({enroll_retries} enrollments retried: join token not committed yet)"
        )
        if args.start_revision > 0:
            set_revision(args.database_url or default_url(data_dir), args.start_revision)
        window_start = time.time() + args.warmup
        window_end = window_start + args.duration
        storm_at = window_start + STORM_START_S
        storm = (storm_at, storm_at + args.storm_offline)
        for _, pipe in children:
            pipe.send((window_start, window_end, window_end + 2.0, storm))
        extended = settle(ctrls, children, window_start, sites)
        window_start, window_end = window_start + extended, window_end + extended
        time.sleep(max(0.0, window_start - time.time()))
        ctrl_procs = [
            p for r in ctrls if r.proc and r.proc.popen for p in process_tree(r.proc.popen.pid)
        ]
        load_procs = [psutil.Process(p.pid) for p, _ in children]
        db0 = database_counters(args.database_url) if args.database_url else None
        docs0 = documents_built(ctrls)
        ctrl_cpu0, load_cpu0, t0 = cpu_seconds(ctrl_procs), cpu_seconds(load_procs), time.time()
        busy0 = machine_busy_seconds()
        console.print(
            f"  measuring for {args.duration:g}s (after {args.warmup + extended:g}s warm-up, "
            f"{extended:g}s of it waiting for the first snapshots)"
        )
        spy, profile = None, None
        if args.profile is not None:
            args.profile.mkdir(parents=True, exist_ok=True)
            label = f"{sites}-{'pg' if args.database_url else 'sqlite'}-w{args.workers}"
            profile = args.profile / f"fleet-{label}.txt"
            spy = _profile.record(ctrl.proc.popen.pid, args.duration - 2, profile)
        time.sleep(max(0.0, window_end - time.time()))
        ctrl_cpu1, load_cpu1, t1 = cpu_seconds(ctrl_procs), cpu_seconds(load_procs), time.time()
        db1 = database_counters(args.database_url) if args.database_url else None
        docs1 = documents_built(ctrls)
        busy1 = machine_busy_seconds()
        rss = peak_rss_mb(ctrl_procs)
        if spy is not None:
            try:  # py-spy writes its samples out after the window: give it time
                spy.wait(180)
            except subprocess.TimeoutExpired:
                spy.kill()
        stats = [_recv(proc, pipe, 120, ctrl) for proc, pipe in children]
        for proc, _ in children:
            proc.join(10)
        acked = {name: seq for s in stats for name, seq in s["acked_seqs"].items()}
        checked = check_events(args.database_url or default_url(data_dir), acked)
    finally:
        for proc, _ in children:
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        for replica in ctrls:
            replica.stop()
            replica.kill_group()
        log = data_dir / "controller.log"
        if log.exists() and log.stat().st_size > 200:
            kept = Path(tempfile.gettempdir()) / f"cloudlet-fleet-{sites}-controller.log"
            shutil.copyfile(log, kept)
            # Long polls still open at shutdown are logged as cancelled: expected.
            console.print(f"  controller log kept: {kept}")
        shutil.rmtree(data_dir, ignore_errors=True)
    wall = t1 - t0
    sync_ms = [v for s in stats for v in s["sync_ms"]]
    errors: dict[str, int] = {}
    for s in stats:
        for kind, n in s["errors"].items():
            errors[kind] = errors.get(kind, 0) + n
    return {
        "sites": sites,
        "interval_s": args.interval,
        "database": "postgresql" if args.database_url else "sqlite",
        "controller_workers": args.workers,
        "controller_replicas": args.replicas,
        "keepalive": args.keepalive,
        "tls": "mutual" if args.tls else "none",
        "setup_s": round(setup_s, 1),
        "enroll_retries": enroll_retries,
        "window_s": round(wall, 1),
        "warmup_extended_s": extended,
        "target_syncs_per_s": round(sites / args.interval, 1),
        "syncs_per_s": round(len(sync_ms) / wall, 1),
        "sync_ms": percentiles(sync_ms),
        "report_ms": percentiles([v for s in stats for v in s["report_ms"]]),
        "desired_ms": percentiles([v for s in stats for v in s["desired_ms"]]),
        "full_report_ms": percentiles([v for s in stats for v in s["full_report_ms"]]),
        "slow_syncs_per_s": slow_seconds([t for s in stats for t in s["timeline"]], t0),
        "load_average": os.getloadavg(),
        "errors": sum(errors.values()),
        "errors_by_kind": errors,
        "events_sent": sum(s["events_sent"] for s in stats),
        # Events the controller acknowledged, the usage events it stored (more: some
        # stored events' acks were still on their way at the end), and of the
        # acknowledged ones those missing or stored twice (both must be 0).
        "events_acked": sum(s["events_acked"] for s in stats),
        **checked,
        **(storm_result(args, stats) if args.storm else {}),
        "long_pollers": sum(s["long_pollers"] for s in stats),
        "long_polls_open_peak": sum(s["long_polls_open_peak"] for s in stats),
        "long_polls_per_s": round(sum(s["long_polls"] for s in stats) / wall, 1),
        # Full snapshots in the window mean agents that were not in steady state.
        "documents_built_per_s": {k: round((docs1[k] - docs0[k]) / wall, 1) for k in docs1}
        if docs0 and docs1
        else None,
        "controller_cpu_pct": round(100 * (ctrl_cpu1 - ctrl_cpu0) / wall, 1),
        # Everything the controller spent (long polls and background loops
        # included) per sync: what this machine's load cannot inflate much.
        "controller_cpu_ms_per_sync": round(1000 * (ctrl_cpu1 - ctrl_cpu0) / len(sync_ms), 2)
        if sync_ms
        else None,
        "controller_peak_rss_mb": round(rss, 1),
        **({"postgresql": database_rates(db0, db1, len(sync_ms), wall)} if db0 and db1 else {}),
        "loadgen_cpu_pct": round(100 * (load_cpu1 - load_cpu0) / wall, 1),
        # Everything else the machine ran meanwhile (other benches, test suites).
        "other_processes_cpu_pct": round(
            100 * ((busy1 - busy0) - (ctrl_cpu1 - ctrl_cpu0) - (load_cpu1 - load_cpu0)) / wall, 1
        ),
        **({"profile": _profile.top(profile)} if profile is not None and profile.exists() else {}),
    }


def _recv(proc: Any, pipe: Any, timeout: float, ctrl: BenchController) -> dict[str, Any]:
    """The next message from a load worker, failing fast if it or the controller died."""
    deadline = time.time() + timeout
    while not pipe.poll(1.0):
        if not proc.is_alive():
            raise RuntimeError(f"load worker exited with {proc.exitcode}")
        if ctrl.proc is not None and not ctrl.proc.alive:
            raise RuntimeError(f"controller exited:\n{ctrl.proc.log_tail()}")
        if time.time() > deadline:
            raise RuntimeError("load worker did not answer in time")
    return pipe.recv()


def render(runs: list[dict[str, Any]]) -> Table:
    table = Table(title="Fleet sync: one controller, simulated agents (sync = report + desired)")
    for col in (
        "sites", "db", "interval s", "target/s", "syncs/s", "p50 ms", "p99 ms",
        "report p99", "desired p99", "errors", "events lost/twice", "long-polls open",
        "ctrl CPU %",
        "ctrl CPU ms/sync",
        "ctrl RSS MB", "loadgen CPU %", "others CPU %",
    ):  # fmt: skip
        table.add_column(col, justify="right")
    for r in runs:
        table.add_row(
            str(r["sites"]),
            _db(r),
            f"{r['interval_s']:g}",
            f"{r['target_syncs_per_s']:.0f}",
            f"{r['syncs_per_s']:.0f}",
            _ms(r["sync_ms"]["p50"]),
            _ms(r["sync_ms"]["p99"]),
            _ms(r["report_ms"]["p99"]),
            _ms(r["desired_ms"]["p99"]),
            str(r["errors"]),
            f"{r['events_lost']}/{r['events_stored_twice']}",
            str(r["long_polls_open_peak"]),
            f"{r['controller_cpu_pct']:.0f}",
            _ms(r["controller_cpu_ms_per_sync"]),
            f"{r['controller_peak_rss_mb']:.0f}",
            f"{r['loadgen_cpu_pct']:.0f}",
            f"{r['other_processes_cpu_pct']:.0f}",
        )
    return table


def _db(r: dict[str, Any]) -> str:
    text = r["database"]
    if r["controller_workers"] > 1:
        text += f" x{r['controller_workers']} workers"
    if r.get("controller_replicas", 1) > 1:
        text += f" x{r['controller_replicas']} replicas"
    if "storm" in r:
        text += f", storm of {r['storm']['agents']}"
    return text


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the finally blocks stop the controller.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    runs = [run_one(args, n) for n in args.sizes]
    console.print(render(runs))
    params = {k: v for k, v in vars(args).items() if k not in ("out", "sites", "profile")}
    params["database_url"] = "<given>" if args.database_url else None
    results = {
        "bench": "fleet",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_info(),
        "parameters": params,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(args.out)
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
