"""How promptly site.offline is raised and cleared, and how many alarms a flapping link raises.

A real controller and a real agent whose link to it runs through a relay that the
bench cuts and restores (testbed.relay). Two scenarios:

- outage: the default timings (report every 10 s, offline grace 30 s, clear hold
  5 s); the link is cut for 45 s, then restored. Measured: the raise after the cut
  (target: within one grace period) and the clear after the restore (target: within
  one report interval), from the alarm's own raised_at and cleared_at.
- flap: a link that is down 2 s and up 2 s for a minute, with timings short enough
  that each down phase is an offline verdict (report every 0.25 s, grace 1.5 s: a
  heartbeat reaches the database within a second, so a shorter grace would judge a
  healthy site offline; the hold stays 5 s). Measured: verdicts, alarms raised
  (target: one, not thirty) and the clear after the flapping ends.

Prints a table and writes bench/results/alarms.json.

    .venv/bin/python bench/alarms.py
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from cloudlet.testbed.local import LocalAgent, LocalController, wait_for
from cloudlet.testbed.relay import RelayThread

RESULTS = Path(__file__).parent / "results" / "alarms.json"
console = Console(width=160)


@dataclass(frozen=True)
class Timings:
    report_s: float
    grace_s: float
    hold_s: float


class Bed:
    """One controller and one agent (site "lyon") behind a relay."""

    def __init__(self, root: Path, t: Timings) -> None:
        env = {"CLOUDLET_CONTROLLER__ALARMS__CLEAR_HOLD_S": str(t.hold_s)}
        self.ctl = LocalController(
            root / "ctl", offline_grace_s=t.grace_s, env=env, insecure=True
        ).start()
        self.api = self.ctl.client()
        made = self.api.post("/v1/sites", json={"name": "lyon"})
        made.raise_for_status()
        self.link = RelayThread("127.0.0.1", self.ctl.port).start()
        self.agent = LocalAgent(
            "lyon",
            root / "lyon",
            self.link.url,
            join_token=made.json()["join_token"]["token"],
            extra_args=["--report-interval", str(t.report_s)],
            env={"CLOUDLET_AGENT__BACKOFF_MAX_S": "0.5", "CLOUDLET_AGENT__POLL_WAIT_S": "5"},
        ).start()
        wait_for(self.online, 60, "lyon online")

    def online(self) -> bool:
        return self.api.get("/v1/sites/lyon").json()["availability"] == "online"

    def alarms(self) -> list[dict[str, Any]]:
        rows = self.api.get("/v1/alarms", params={"site": "lyon"}).json()
        return [a for a in rows if a["alarm_id"] == "site.offline"]

    def verdicts(self) -> int:
        events = self.api.get("/v1/events", params={"site": "lyon", "limit": 10_000}).json()
        return sum(1 for e in events if e["kind"] == "site.offline")

    def close(self) -> None:
        self.agent.stop()
        self.link.stop()
        self.api.close()
        self.ctl.stop()


def _at(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone(UTC).timestamp()


def outage(root: Path, t: Timings, cut_s: float, runs: int) -> list[dict[str, float]]:
    bed = Bed(root, t)
    out = []
    try:
        for _ in range(runs):
            before = {a["id"] for a in bed.alarms()}
            cut_at = time.time()
            bed.link.cut()
            time.sleep(cut_s)
            restored_at = time.time()
            bed.link.restore()

            def cleared(before: set[str] = before) -> dict[str, Any] | None:
                new = [a for a in bed.alarms() if a["id"] not in before]
                return new[0] if new and new[0]["cleared_at"] else None

            alarm = wait_for(cleared, t.hold_s + 4 * t.report_s + 30, "the alarm cleared")
            out.append(
                {
                    "raised_after_cut_s": round(_at(alarm["raised_at"]) - cut_at, 2),
                    "cleared_after_restore_s": round(_at(alarm["cleared_at"]) - restored_at, 2),
                }
            )
            time.sleep(t.report_s)
    finally:
        bed.close()
    return out


def flap(root: Path, t: Timings, down_s: float, up_s: float, minutes: float) -> dict[str, Any]:
    bed = Bed(root, t)
    try:
        verdicts0 = bed.verdicts()
        end = time.time() + minutes * 60
        flaps = 0
        while time.time() < end:
            bed.link.cut()
            time.sleep(down_s)
            bed.link.restore()
            time.sleep(up_s)
            flaps += 1
        ended_at = time.time() - up_s

        def cleared() -> list[dict[str, Any]] | None:
            rows = bed.alarms()
            return rows if rows and all(a["cleared_at"] for a in rows) else None

        try:
            rows = wait_for(cleared, t.hold_s + 30, "the flap's alarm cleared")
        except Exception as exc:
            raise RuntimeError(f"{exc}: alarms {bed.alarms()}, verdicts {bed.verdicts()}") from exc
        last_clear = max(_at(a["cleared_at"]) for a in rows)
        return {
            "flaps": flaps,
            "offline_verdicts": bed.verdicts() - verdicts0,
            "alarms_raised": len(rows),
            "cleared_after_flapping_s": round(last_clear - ended_at, 2),
        }
    finally:
        bed.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=2, help="outages measured")
    p.add_argument("--flap-minutes", type=float, default=1.0)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    defaults = Timings(report_s=10.0, grace_s=30.0, hold_s=5.0)
    fast = Timings(report_s=0.25, grace_s=1.5, hold_s=5.0)
    with tempfile.TemporaryDirectory(prefix="cloudlet-alarms-") as tmp:
        console.print("outage: 45 s cuts at the default timings")
        outages = outage(Path(tmp) / "outage", defaults, 45.0, args.runs)
        console.print("flap: 2 s down, 2 s up")
        flapping = flap(Path(tmp) / "flap", fast, 2.0, 2.0, args.flap_minutes)
    table = Table(title="site.offline: raise, clear, flapping")
    for col in ("scenario", "timings", "measured", "target"):
        table.add_column(col)
    timing = (
        f"report {defaults.report_s:g} s, grace {defaults.grace_s:g} s, hold {defaults.hold_s:g} s"
    )
    for i, o in enumerate(outages, 1):
        table.add_row(
            f"outage {i}", timing,
            f"raised {o['raised_after_cut_s']:.1f} s after the cut, cleared "
            f"{o['cleared_after_restore_s']:.1f} s after the restore",
            f"raise <= {defaults.grace_s:g} s, clear <= {defaults.report_s:g} s",
        )  # fmt: skip
    table.add_row(
        "flap", f"report {fast.report_s:g} s, grace {fast.grace_s:g} s, hold {fast.hold_s:g} s",
        f"{flapping['flaps']} flaps, {flapping['offline_verdicts']} offline verdicts, "
        f"{flapping['alarms_raised']} alarm(s), cleared "
        f"{flapping['cleared_after_flapping_s']:.1f} s after the flapping ended",
        "1 alarm",
    )  # fmt: skip
    console.print(table)
    result = {
        "bench": "alarms",
        "when": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "outage": {"timings": defaults.__dict__, "runs": outages},
        "flap": {"timings": fast.__dict__, "down_s": 2.0, "up_s": 2.0, **flapping},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
