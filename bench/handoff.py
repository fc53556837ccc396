"""Handoff bench: moving a running app VM between two sites over a shaped WAN link.

Two network namespaces (source and destination site) joined by a veth pair shaped
with tc tbf on both ends; the project's relay, in the destination's namespace, adds
the one-way delay in front of whatever listens there. For each app and link rate,
three ways to move the same freshly booted VM, each while a client polls its
service every 50 ms (one poller per site, so the client sees the old copy until it
stops answering and the new one from its first answer):

- ``cloudlet-handoff``: compute/qemu/handoff.py: pre-copy rounds of the chunks that
  differ from the base the destination holds, pause, last delta + device state;
- ``qemu-migrate`` / ``qemu-migrate-zstd``: QEMU's live migration (``migrate`` to a
  TCP URI) of RAM and, the destination having no shared storage, the whole disk
  (block migration), plain and with multifd zstd compression;
- ``suspend-copy-resume``: pause, send everything that differs from the base in one
  go (the same engine with no pre-copy round), resume.

``cloudlet-handoff-zero-ram`` (not run unless named in ``--methods``) is
``cloudlet-handoff`` with the VM's RAM diffed against zeros instead of the base VM's
RAM: what the memory base saves.

Reports total time, downtime (the longest gap between two answers the client saw),
bytes sent (what the source wrote to the link, measured at the relay) and prints a
table; results go to bench/results/handoff.json.

    sudo .venv/bin/python bench/handoff.py --apps tiny --rates 38,100

Needs root (namespaces, tc) and qemu-system-x86_64; ``small`` and ``large`` need the
overlay bench's Debian images (see bench/synthesis.py).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from cloudlet.compute.base import WorkloadSpec
from cloudlet.compute.qemu import QemuDriver
from cloudlet.compute.qemu._config import command_line, options_of, socket_path
from cloudlet.compute.qemu._qmp import QmpSession
from cloudlet.compute.qemu.handoff import (
    LiveSource,
    finish_source,
    receive_live,
    send_live,
    tcp_accept,
    tcp_connect,
)
from cloudlet.testbed.local import free_port, wait_for
from cloudlet.testbed.netns import SITE_ADDR, Link, tbf_args
from cloudlet.testbed.relay import RelayThread

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _vmapps import VmApp, prepare

console = Console()
RESULTS = Path(__file__).resolve().parent / "results" / "handoff.json"
DEFAULT_CACHE = Path("/var/tmp/cloudlet-synthesis")
DEFAULT_IMAGES = Path("/var/tmp/cloudlet-bench-trim")
POLL_S = 0.05
#: Seconds the service is polled before the move starts (the light client load).
WARMUP_S = 2.0
#: Longest the bench waits for the moved copy's first answer after a handoff.
FIRST_ANSWER_WAIT_S = 60.0
METHODS = ("cloudlet-handoff", "suspend-copy-resume", "qemu-migrate", "qemu-migrate-zstd")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--images-dir", type=Path, default=DEFAULT_IMAGES)
    p.add_argument("--apps", default="small,large", help="comma list of: tiny, small, large")
    p.add_argument("--rates", default="38,100", help="link rates in Mbit/s")
    p.add_argument("--delay-ms", type=float, default=20.0, help="one-way delay")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--results", type=Path, default=RESULTS)
    return p.parse_args(argv)


class Poller:
    """A client polling ``http://endpoint/`` every 50 ms; records when it was answered."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.answers: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Poller:
        self._thread.start()
        return self

    def _run(self) -> None:
        with httpx.Client(timeout=0.5, trust_env=False) as http:
            while not self._stop.is_set():
                t0 = time.monotonic()
                with contextlib.suppress(httpx.HTTPError):
                    if http.get(f"http://{self.endpoint}/").status_code < 500:
                        self.answers.append(time.monotonic())
                self._stop.wait(max(0.0, POLL_S - (time.monotonic() - t0)))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def downtime(before: Poller, after: Poller, since: float) -> float | None:
    """The longest gap between two answers the client saw (from either copy) since
    the move began; None if the new copy never answered."""
    if not after.answers:
        return None
    times = sorted(t for t in before.answers + after.answers if t >= since - POLL_S)
    return round(max(b - a for a, b in itertools.pairwise(times)), 3)


class Sites:
    """The two namespaces, a qemu driver in each, the delay relay in the destination."""

    def __init__(self, link: Link, run_dir: Path, delay_ms: float) -> None:
        self.link, self.run_dir, self.delay_ms = link, run_dir, delay_ms
        self.src_ns = link.executor(link.ctl)
        self.dst_ns = link.executor(link.site)
        self.src: QemuDriver = self.in_src(lambda: QemuDriver(run_dir / "src", stop_timeout=5))
        self.dst: QemuDriver = self.in_dst(lambda: QemuDriver(run_dir / "dst", stop_timeout=5))

    def in_src(self, fn: Any, *a: Any) -> Any:
        return self.src_ns.submit(fn, *a).result()

    def in_dst(self, fn: Any, *a: Any) -> Any:
        return self.dst_ns.submit(fn, *a).result()

    def relay_to(self, port: int) -> RelayThread:
        """A delaying relay on the destination's veth address in front of ``port``."""
        relay = RelayThread("127.0.0.1", port, listen_host=SITE_ADDR, delay_ms=self.delay_ms)
        self.in_dst(relay.start)
        return relay

    def close(self) -> None:
        for driver in (self.src, self.dst):
            with contextlib.suppress(Exception):
                for wid in driver.list():
                    driver.delete(wid)
                driver.close()


def boot_source(sites: Sites, app: VmApp, disk: Path) -> tuple[WorkloadSpec, str]:
    # Sparse, as a synthesized disk at a site is (shutil.copyfile would fill the holes).
    subprocess.run(["cp", "--sparse=always", str(app.disk), str(disk)], check=True)
    spec = WorkloadSpec(
        "vm", port=free_port(), guest_port=app.guest_port, memory_mib=app.memory_mib,
        disk_image=disk, env=app.env,
    )  # fmt: skip
    sites.in_src(sites.src.create, spec)
    endpoint = sites.in_src(lambda: sites.src.start("vm").endpoint)
    wait_for(lambda: sites.in_src(_answers, endpoint), 300, "the app VM's service")
    return spec, endpoint


def _answers(endpoint: str) -> bool:
    try:
        return httpx.get(f"http://{endpoint}/", timeout=2, trust_env=False).status_code < 500
    except httpx.HTTPError:
        return False


def run_cloudlet(sites: Sites, app: VmApp, rounds: bool, ram_base: bool = True) -> dict[str, Any]:
    """The project's handoff (``rounds`` False: suspend, copy the changed state, resume;
    ``ram_base`` False: RAM diffed against zeros, not the base VM's RAM)."""
    memory_base = app.memory_base if ram_base else None
    spec, src_endpoint = boot_source(sites, app, sites.run_dir / "src.img")
    dest = dataclasses.replace(spec, port=free_port(), disk_image=sites.run_dir / "dst.img")
    server = sites.in_dst(_listener)
    relay = sites.relay_to(server.getsockname()[1])
    result: dict[str, Any] = {}

    def destination() -> None:
        result["endpoint"] = receive_live(
            tcp_accept(server), sites.dst, dest, app.base, memory_base
        )

    receiver = sites.link.executor(sites.link.site).submit(destination)  # its own thread
    src_poll = sites.in_src(lambda: Poller(src_endpoint).start())
    time.sleep(WARMUP_S)
    t0 = time.monotonic()
    dst_poll = sites.in_dst(lambda: Poller(f"127.0.0.1:{dest.port}").start())

    def source() -> Any:
        live = LiveSource.of(sites.src, "vm", app.base, memory_base)
        return send_live(live, tcp_connect((SITE_ADDR, relay.port)), max_rounds=8 if rounds else 0)

    stats = sites.src_ns.submit(source).result()
    receiver.result(timeout=120)
    total = time.monotonic() - t0
    sites.in_src(finish_source, sites.src, "vm")
    # The downtime ends with the new copy's first answer, however late it comes: a
    # fixed second here left a 1 GiB guest's slower first answer out (downtime None).
    wait_for(lambda: dst_poll.answers, FIRST_ANSWER_WAIT_S, "the moved VM answering")
    time.sleep(1.0)
    src_poll.stop()
    dst_poll.stop()
    wire = relay.stats().bytes_up
    relay.stop()
    server.close()
    sites.in_dst(sites.dst.delete, "vm")
    return {
        "total_s": round(total, 3),
        "downtime_s": downtime(src_poll, dst_poll, t0),
        "paused_s": stats.downtime_s,
        "bytes_sent": wire,
        "rounds": len(stats.rounds),
        "raw_bytes": stats.raw_bytes,
        "region_bytes": stats.region_bytes,
        "round_detail": stats.rounds,
    }


def _listener() -> socket.socket:
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    return server


def run_qemu_migrate(sites: Sites, app: VmApp, zstd: bool) -> dict[str, Any]:
    """QEMU's own live migration of RAM and (block migration) the whole disk."""
    spec, src_endpoint = boot_source(sites, app, sites.run_dir / "src.img")
    work = sites.run_dir / "qemu-dst"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    disk = work / "disk.img"
    with disk.open("wb") as f:  # no shared storage: an empty disk of the same size
        f.truncate(spec.disk_image.stat().st_size)  # type: ignore[union-attr]
    dest = dataclasses.replace(spec, port=free_port(), disk_image=disk)
    qmp = socket_path(work)
    argv = command_line(
        sites.src.qemu, dest, options_of(dest), work, accel=sites.dst.accelerator(),
        host="127.0.0.1", qmp=qmp, incoming=True,
    )  # fmt: skip
    argv.remove("-S")  # run as soon as the migration lands
    log = (work / "qemu.log").open("wb")
    proc = sites.in_dst(lambda: subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT))
    try:
        wait_for(qmp.exists, 30, "the destination QEMU's monitor")
        time.sleep(0.5)
        port = sites.in_dst(free_port)
        # zero-blocks: QEMU sends a flag, not 1 MiB of zeros, for each empty block of the
        # (sparse, trimmed) 2 GiB Debian disks; without it block migration sends all 2 GiB.
        caps = [{"capability": c, "state": True} for c in ("block", "zero-blocks")]
        if zstd:
            caps.append({"capability": "multifd", "state": True})
        with QmpSession(qmp, timeout=30) as dq:
            dq.execute("migrate-set-capabilities", {"capabilities": caps})
            if zstd:
                dq.execute("migrate-set-parameters", {"multifd-compression": "zstd"})
            dq.execute("migrate-incoming", {"uri": f"tcp:127.0.0.1:{port}"})
        relay = sites.relay_to(port)
        src_poll = sites.in_src(lambda: Poller(src_endpoint).start())
        time.sleep(WARMUP_S)
        t0 = time.monotonic()
        dst_poll = sites.in_dst(lambda: Poller(f"127.0.0.1:{dest.port}").start())
        src_qmp = Path(sites.src._get("vm").rt.qmp or "")
        with QmpSession(src_qmp, timeout=30) as sq:
            sq.execute("migrate-set-capabilities", {"capabilities": caps})
            if zstd:
                sq.execute("migrate-set-parameters", {"multifd-compression": "zstd"})
            sq.execute("migrate", {"uri": f"tcp:{SITE_ADDR}:{relay.port}"})
            deadline = time.monotonic() + 1800
            while True:
                info = sq.execute("query-migrate")
                if info.get("status") == "completed":
                    break
                if info.get("status") in ("failed", "cancelled") or time.monotonic() > deadline:
                    raise RuntimeError(f"QEMU migration failed: {info}")
                time.sleep(0.05)
        migrated = time.monotonic() - t0
        crashed = None
        try:
            wait_for(lambda: dst_poll.answers, 30, "the migrated VM answering")
        except Exception:  # what it cost is still worth a row; the console says why
            console_log = work / "console.log"
            tail = console_log.read_text(errors="replace")[-300:] if console_log.exists() else ""
            crashed = f"the migrated VM never answered; its console ends: {tail}"
        total = time.monotonic() - t0
        time.sleep(1.0)
        src_poll.stop()
        dst_poll.stop()
        wire = relay.stats().bytes_up
        relay.stop()
        with contextlib.suppress(Exception), QmpSession(qmp, timeout=5) as dq:
            dq.execute_closing("quit")
        proc.wait(10)
        sites.in_src(sites.src.delete, "vm")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()
    return {
        "total_s": None if crashed else round(total, 3),
        "migration_s": round(migrated, 3),
        "downtime_s": None if crashed else downtime(src_poll, dst_poll, t0),
        "paused_s": round(info.get("downtime", 0) / 1000, 3),
        "bytes_sent": wire,
        "rounds": info.get("ram", {}).get("dirty-sync-count"),
        "raw_bytes": None,
        **({"error": crashed} if crashed else {}),
    }


def table(rows: list[dict[str, Any]]) -> Table:
    out = Table(title="VM handoff over a shaped link (20 ms one-way)")
    for col in ("app", "Mbit/s", "method", "total s", "downtime s", "MB sent", "bound s", "rounds"):
        out.add_column(col)
    for r in rows:
        if r.get("error") and r.get("bytes_sent") is None:
            out.add_row(r["app"], f"{r['rate_mbit']:g}", r["method"], "failed: " + r["error"][:40])
            continue
        total = "-" if r["total_s"] is None else f"{r['total_s']:.2f}"
        if r.get("error"):
            total = f"guest died ({r['migration_s']:.2f} migrating)"
        out.add_row(
            r["app"], f"{r['rate_mbit']:g}", r["method"], total,
            "-" if r["downtime_s"] is None else f"{r['downtime_s']:.2f}",
            f"{r['bytes_sent'] / 1e6:.1f}", f"{r['time_bound_s']:.2f}", str(r["rounds"]),
        )  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        console.print("[red]needs root (network namespaces, tc)")
        return 2
    rows: list[dict[str, Any]] = []
    methods = [m for m in args.methods.split(",") if m]
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for name in args.apps.split(","):
        app = prepare(name, args.cache_dir / "apps" / args.images_dir.resolve().name,
                      args.images_dir)  # fmt: skip
        for rate in (float(r) for r in args.rates.split(",")):
            for method in methods:
                run_dir = Path(tempfile.mkdtemp(prefix=f"handoff-{name}-", dir=args.cache_dir))
                load = round(os.getloadavg()[0], 2)  # the host is shared: say how busy
                with Link(prefix="clhof", rate_mbit=rate) as link:
                    sites = Sites(link, run_dir, args.delay_ms)
                    try:
                        if method.startswith("qemu-migrate"):
                            r = run_qemu_migrate(sites, app, zstd=method.endswith("zstd"))
                        else:
                            r = run_cloudlet(
                                sites, app, rounds=method != "suspend-copy-resume",
                                ram_base=method != "cloudlet-handoff-zero-ram",
                            )  # fmt: skip
                    except Exception as exc:  # recorded, and the other methods still run
                        console.print(f"[red]{name} {rate:g} {method}: {exc}")
                        r = {"error": str(exc)[:500], "total_s": None, "downtime_s": None,
                             "bytes_sent": None, "rounds": None}  # fmt: skip
                    finally:
                        sites.close()
                shutil.rmtree(run_dir, ignore_errors=True)
                r |= {"app": name, "rate_mbit": rate, "method": method, "load_1m_at_start": load}
                if r["bytes_sent"] is not None:
                    r["time_bound_s"] = round(1.3 * r["bytes_sent"] * 8 / (rate * 1e6) + 2, 3)
                r["measured_at"] = started
                console.print(r)
                rows.append(r)
                write_results(args, rows)  # after every row: a crash keeps what was measured
    console.print(table(rows))
    return 0


def write_results(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    old = json.loads(args.results.read_text()) if args.results.exists() else {}
    keyed = {(r["app"], r["rate_mbit"], r["method"]): r for r in old.get("rows", [])}
    keyed |= {(r["app"], r["rate_mbit"], r["method"]): r for r in rows}
    out = {
        "bench": "handoff",
        "link": {
            "shaping": "tc tbf on both veth ends: " + " ".join(tbf_args(38)) + " (rate varies)",
            "one_way_delay_ms": args.delay_ms,
            "delay_by": "cloudlet.testbed.relay in the destination namespace (RTT +2x)",
        },
        "downtime": "longest gap a client polling every 50 ms saw between two answers",
        "bytes_sent": "source -> destination bytes through the relay",
        "machine": {"cpus": os.cpu_count(), "accel": "tcg (software emulation)"},
        "findings": old.get("findings", []),
        "rows": sorted(keyed.values(), key=lambda r: (r["app"], r["rate_mbit"], r["method"])),
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
