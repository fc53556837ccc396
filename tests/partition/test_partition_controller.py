"""The controller's own failures: killed during a sync storm, and restored from an older
backup (its revisions and acknowledgements go backwards)."""

from __future__ import annotations

import shutil
import sqlite3
import time
from pathlib import Path

import pytest
from partition_bed import Bed

from cloudlet.testbed.invariants import EventTally, Probe
from cloudlet.testbed.local import wait_for

pytestmark = pytest.mark.partition

FAST_USAGE = {"CLOUDLET_AGENT__USAGE_INTERVAL_S": "0.2"}


def test_controller_killed_during_a_sync_storm(bed: Bed) -> None:
    sites = [bed.site(f"storm{n}", env=FAST_USAGE) for n in range(4)]
    ids = {s.name: [bed.create_at_controller(s, f"{s.name}-a")] for s in sites}
    running = {}
    for s in sites:
        running |= bed.wait_local_running(s, ids[s.name])
    with Probe() as probe:
        for iid, inst in running.items():
            probe.set(iid, inst["endpoint"])
        for s in sites:
            s.cut()
        time.sleep(4.0)  # every site builds a backlog (usage every 0.2 s)
        for s in sites:
            ids[s.name].append(bed.create_at_controller(s, f"{s.name}-b"))
            s.restore()
        restored = time.monotonic()
        for delay in (0.3, 0.8):  # SIGKILL twice while the backlog drains
            time.sleep(delay)
            bed.wan.restart_controller(kill=True)
        took = [bed.converge(s, ids[s.name], since=restored) for s in sites]
    assert probe.misses() == 0, probe.errors
    total = EventTally("all")
    for s in sites:
        events, _ = bed.check(s)
        total = total + events
    assert total.ok() and total.recorded > 4 * 20, total
    print(f"storm: converged within {max(took):.2f}s of the restore; {total}")


def _backup(db: Path, to: Path) -> None:
    with sqlite3.connect(db) as src, sqlite3.connect(to) as dst:
        src.backup(dst)


def test_controller_restored_from_an_older_backup(bed: Bed) -> None:
    site = bed.site("restore", env=FAST_USAGE)
    before = [bed.create_at_controller(site, "r-ctl-a"), bed.create_at_site(site, "r-loc-a")]
    bed.wait_local_running(site, before)
    bed.converge(site, before, since=time.monotonic())
    backup = bed.tmp / "controller-backup.db"
    _backup(bed.controller_db, backup)
    revision_at_backup = bed.wan.site_view("restore")["revision"]

    # After the backup: more desired state, more site events, all acknowledged.
    after_ctl = bed.create_at_controller(site, "r-ctl-b")
    after_loc = bed.create_at_site(site, "r-loc-b")
    bed.converge(site, [*before, after_ctl, after_loc], since=time.monotonic())
    time.sleep(1.0)
    cursor = wait_for(site.agent.health, 5, "agent health")["cursor"]
    assert cursor > revision_at_backup

    ctl = bed.wan.controller
    assert ctl is not None
    ctl.kill()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{bed.controller_db}{suffix}").unlink(missing_ok=True)
    shutil.copy(backup, bed.controller_db)
    ctl.start()
    restarted = time.monotonic()
    assert bed.wan.site_view("restore")["revision"] < cursor  # revisions went backwards

    # The site resyncs by snapshot: what the controller forgot it wanted goes, the
    # instance a local client started is adopted again, and no event is lost.
    took = bed.converge(site, [*before, after_loc], since=restarted)
    wait_for(lambda: after_ctl not in bed.local_states(site), 20, "the forgotten instance to go")
    events, usage = bed.check(site)
    assert events.pending == 0 or events.ok()
    log = site.agent.proc.log_tail(200) if site.agent.proc else ""
    assert "restored from a backup" in log
    print(f"restore: converged {took:.2f}s after the restart; {events}; {usage.intervals} usage")
