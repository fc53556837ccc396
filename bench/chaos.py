"""Chaos on the emulated WAN: seeded random cuts, flaps, agent kills and controller
restarts, with instances created and deleted all along; then the partition invariants.

    sudo .venv/bin/python bench/chaos.py --sites 20 --minutes 10 --seed 13

Every site is a network namespace with a real `cloudlet agent run`, behind its own
relay and veth (cuts are nftables drops); the controller is a real `cloudlet controller
serve` in its own namespace (see cloudlet.testbed.wan). Prints one table and writes
bench/results/chaos.json: events recorded, delivered, duplicated, lost (the site's own
journal against the controller's table), probe misses (every workload asked every
100 ms), and convergence after each restore (online and in sync at the controller).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from cloudlet.testbed.invariants import EventTally, Probe, check_events, check_usage
from cloudlet.testbed.local import wait_for
from cloudlet.testbed.wan import HELLO_APP as APP
from cloudlet.testbed.wan import Wan, WanSite, hello_app

RESULTS = Path(__file__).resolve().parent / "results" / "chaos.json"
REPORT_INTERVAL_S = 1.0  # what cloudlet.testbed.local starts agents with


@dataclass
class Chaos:
    wan: Wan
    rng: random.Random
    probe: Probe
    instances: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (site, origin)
    convergence: dict[str, list[float]] = field(default_factory=dict)  # fault -> seconds
    #: Every restore: fault, site, seconds after the start, seconds to converge from the
    #: restore, and from the later of the restore and the controller's return.
    samples: list[dict[str, Any]] = field(default_factory=list)
    #: (down, up) monotonic times of each controller restart.
    controller_down: list[tuple[float, float]] = field(default_factory=list)
    began: float = field(default_factory=time.monotonic)
    unconverged: int = 0
    actions: dict[str, int] = field(default_factory=dict)
    busy: set[str] = field(default_factory=set)  # sites with an episode under way
    lock: threading.Lock = field(default_factory=threading.Lock)
    threads: list[threading.Thread] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    # -- bookkeeping ----------------------------------------------------------------------

    def count(self, what: str) -> None:
        with self.lock:
            self.actions[what] = self.actions.get(what, 0) + 1

    def free_site(self) -> WanSite | None:
        with self.lock:
            free = [s for s in self.wan if s.name not in self.busy]
            if not free:
                return None
            site = self.rng.choice(free)
            self.busy.add(site.name)
            return site

    def release(self, site: WanSite) -> None:
        with self.lock:
            self.busy.discard(site.name)

    def episode(self, fn: Callable[[], None]) -> None:
        def run() -> None:
            try:
                fn()
            except Exception as exc:  # recorded, the run goes on
                self.errors.append(f"{type(exc).__name__}: {exc}")

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self.threads.append(thread)

    def measure(self, fault: str, site: WanSite, since: float, timeout: float = 60.0) -> None:
        """Time from a restore until the controller shows the site online and in sync."""
        deadline = since + timeout
        while time.monotonic() < deadline:
            try:
                view = self.wan.site_view(site.name)
                if view["availability"] == "online" and view["sync_status"] == "in-sync":
                    self._converged(fault, site, since, time.monotonic())
                    return
            except Exception:
                pass  # the controller may be restarting
            time.sleep(0.05)
        with self.lock:
            self.unconverged += 1

    def _converged(self, fault: str, site: WanSite, since: float, at: float) -> None:
        with self.lock:
            # A controller that was down after the restore delays every site: the time
            # it took to come back is the controller's, not this site's to make up.
            ready = max(
                [since] + [up for down, up in self.controller_down if down < at and up > since]
            )
            self.convergence.setdefault(fault, []).append(at - ready)
            self.samples.append({
                "fault": fault, "site": site.name, "at_s": round(since - self.began, 2),
                "from_restore_s": round(at - since, 3), "from_ready_s": round(at - ready, 3),
            })  # fmt: skip

    # -- faults -----------------------------------------------------------------------

    def cut(self, site: WanSite) -> None:
        hold = self.rng.uniform(2, 20)
        self.count("cut")
        site.cut()
        time.sleep(hold)
        site.restore()
        self.measure("cut", site, time.monotonic())
        self.release(site)

    def flap(self, site: WanSite) -> None:
        self.count("flap")
        for _ in range(self.rng.randint(3, 6)):
            site.cut()
            time.sleep(2)
            site.restore()
            time.sleep(2)
        self.measure("flap", site, time.monotonic() - 2)
        self.release(site)

    def kill_agent(self, site: WanSite) -> None:
        self.count("agent-kill")
        assert site.agent.proc is not None
        site.agent.proc.kill()  # the workloads keep running; the next agent adopts them
        time.sleep(self.rng.uniform(0.5, 5))
        site.agent.start()
        self.measure("agent-kill", site, time.monotonic())
        self.release(site)

    def restart_controller(self) -> None:
        self.count("controller-restart")
        down = time.monotonic()
        self.wan.restart_controller(kill=True)
        with self.lock:
            self.controller_down.append((down, time.monotonic()))

    # -- churn ------------------------------------------------------------------------

    def create(self) -> None:
        site = self.rng.choice(list(self.wan))
        # A local client can start the app only where the site holds its definition,
        # that is once the controller placed an instance of it there.
        has_app = any(s == site.name for s, _ in self.instances.values())
        at_site = self.rng.random() < 0.4 and has_app
        try:
            if at_site:
                with site.local() as local:
                    made = local.post("/v1/local/instances", json={"app": APP})
                made.raise_for_status()
            else:
                made = self.wan.api.post("/v1/instances", json={"app": APP, "site": site.name})
                made.raise_for_status()
        except Exception as exc:
            self.errors.append(f"create at {site.name}: {exc}")
            return
        self.count("create-site" if at_site else "create-controller")
        self.instances[made.json()["id"]] = (site.name, "site" if at_site else "controller")

    def delete(self) -> None:
        ctl = [i for i, (_, origin) in self.instances.items() if origin == "controller"]
        if len(ctl) < 5:
            return
        victim = self.rng.choice(ctl)
        self.probe.drop(victim)
        try:
            self.wan.api.delete(f"/v1/instances/{victim}").raise_for_status()
        except Exception as exc:
            self.errors.append(f"delete {victim}: {exc}")
            return
        self.count("delete")
        del self.instances[victim]

    def watch_running(self) -> None:
        """Probe every instance the site shows running (its local view, over the LAN)."""
        for site in self.wan:
            try:
                with site.local(timeout=2) as local:
                    for inst in local.get("/v1/local/instances").json():
                        new = self.probe.targets.get(inst["id"]) != inst["endpoint"]
                        if inst["state"] == "running" and inst["id"] in self.instances and new:
                            self.probe.set(inst["id"], inst["endpoint"])
            except Exception:
                continue  # its agent is down for the moment


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="cloudlet-chaos-"))
    with Wan(root, prefix="chaos", offline_grace_s=5) as wan, Probe() as probe:
        wan.api.post("/v1/apps", json=hello_app(root)).raise_for_status()
        for n in range(args.sites):
            wan.add_site(f"site{n:02d}")
        for site in wan:
            wan.wait_online(site.name, timeout=120)
        chaos = Chaos(wan, rng, probe)
        for _ in range(args.sites):
            chaos.create()
        began = chaos.began = time.monotonic()
        end = began + args.minutes * 60
        next_controller = began + rng.uniform(60, 150)
        while time.monotonic() < end:
            time.sleep(rng.uniform(0.5, 2.0))
            roll = rng.random()
            if roll < 0.35:
                chaos.create()
            elif roll < 0.5:
                chaos.delete()
            elif roll < 0.95:
                site = chaos.free_site()
                if site is not None:
                    fault = rng.choices([chaos.cut, chaos.flap, chaos.kill_agent], [5, 2, 3])[0]
                    chaos.episode(lambda f=fault, s=site: f(s))
            if time.monotonic() > next_controller:
                chaos.restart_controller()
                next_controller = time.monotonic() + rng.uniform(60, 150)
            chaos.watch_running()
        for thread in chaos.threads:
            thread.join(120)
        elapsed = time.monotonic() - began
        # Everything restored: every site must be in sync and drained before the checks.
        for site in wan:
            wait_for(
                lambda s=site: wan.site_view(s.name)["sync_status"] == "in-sync", 120, "in sync"
            )
        time.sleep(3 * REPORT_INTERVAL_S)
        controller_db = wan.root / "ctl" / "controller.db"
        total = EventTally("all")
        usage_bad: list[str] = []
        per_site = {}
        for site in wan:
            tally = check_events(site.agent.data_dir / "agent.db", controller_db, site.name)
            usage = check_usage(controller_db, site.name)
            per_site[site.name] = {**tally.__dict__, "usage_ok": usage.ok()}
            total = total + tally
            if not usage.ok():
                usage_bad.append(f"{site.name}: {usage.overlaps[:2]} {usage.gaps[:2]}")
        misses = probe.misses()
        asked = sum(probe.asked.values())
    conv = [s for taken in chaos.convergence.values() for s in taken]
    return {
        "bench": "chaos",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "parameters": {
            "sites": args.sites,
            "minutes": args.minutes,
            "ran_s": round(elapsed, 1),
            "seed": args.seed,
            "report_interval_s": REPORT_INTERVAL_S,
        },
        "actions": chaos.actions,
        "events": {
            "recorded": total.recorded,
            "folded": total.folded,
            "delivered": total.delivered,
            "pending": total.pending,
            "duplicated": total.duplicated,
            "lost": total.lost,
            "unexpected": total.unexpected,
        },
        "usage_violations": usage_bad,
        "probe": {"asked": asked, "missed": misses, "first_misses": probe.errors[:5]},
        "convergence_s": {
            "restores": len(conv),
            "p50": percentile(conv, 0.5),
            "p99": percentile(conv, 0.99),
            "max": max(conv) if conv else None,
            "mean": statistics.fmean(conv) if conv else None,
            "from_restore_p99": percentile([r["from_restore_s"] for r in chaos.samples], 0.99),
            "unconverged_within_60s": chaos.unconverged,
            "by_fault": {
                fault: {
                    "restores": len(taken),
                    "p50": percentile(taken, 0.5),
                    "p99": percentile(taken, 0.99),
                    "max": max(taken),
                }
                for fault, taken in sorted(chaos.convergence.items())
            },
        },
        "controller_restarts_s": [round(up - down, 2) for down, up in chaos.controller_down],
        "slowest_restores": sorted(chaos.samples, key=lambda r: -r["from_restore_s"])[:10],
        "errors": chaos.errors[:20],
        "per_site": per_site,
    }


def show(result: dict[str, Any]) -> None:
    p, e, c, pr = result["parameters"], result["events"], result["convergence_s"], result["probe"]
    table = Table(title=f"chaos: {p['sites']} sites, {p['ran_s'] / 60:.1f} min, seed {p['seed']}")
    for col in ("recorded", "delivered", "duplicated", "lost", "folded", "probe misses",
                "restores", "conv p50 s", "conv p99 s"):  # fmt: skip
        table.add_column(col, justify="right")

    def fmt(x: float | None) -> str:
        return "-" if x is None else f"{x:.2f}"

    table.add_row(
        str(e["recorded"]), str(e["delivered"]), str(e["duplicated"]), str(e["lost"]),
        str(e["folded"]), f"{pr['missed']} / {pr['asked']}", str(c["restores"]),
        fmt(c["p50"]), fmt(c["p99"]),
    )  # fmt: skip
    console = Console(width=120)
    console.print(table)
    console.print(f"actions: {result['actions']}")
    for fault, c in result["convergence_s"]["by_fault"].items():
        console.print(
            f"convergence after {fault}: {c['restores']} restores, p50 {fmt(c['p50'])} s, "
            f"p99 {fmt(c['p99'])} s, max {fmt(c['max'])} s"
        )
    if result["usage_violations"] or result["errors"]:
        console.print(f"usage violations: {result['usage_violations']}")
        console.print(f"errors: {result['errors']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=20)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    result = run(args)
    show(result)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
