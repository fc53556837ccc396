"""Cold boot while offline: the whole site (agent and workloads) dies while its link is
cut, and comes back from its own store alone."""

from __future__ import annotations

import time
from datetime import datetime

import pytest
from partition_bed import Bed, now

from cloudlet.testbed.invariants import Probe
from cloudlet.testbed.local import wait_for

pytestmark = pytest.mark.partition


def test_cold_boot_offline_restarts_from_local_store_and_reconciles(bed: Bed) -> None:
    site = bed.site("boot", env={"CLOUDLET_AGENT__USAGE_INTERVAL_S": "0.5"})
    ids = [bed.create_at_controller(site, "boot-ctl"), bed.create_at_site(site, "boot-loc")]
    bed.wait_local_running(site, ids)

    site.cut()
    time.sleep(1.0)
    assert site.power_off() >= 3  # the agent and two workloads
    # Dead from here: until power_off returns, a process may still write its last mark.
    killed_at = now()
    time.sleep(1.0)
    site.agent.start()  # still cut: only its store tells it what to run
    running = bed.wait_local_running(site, ids)
    back_at = now()
    health = wait_for(site.agent.health, 10, "the site-local API")
    assert health["controller_reachable"] is not True
    offline_new = bed.create_at_site(site, "boot-offline")
    running |= bed.wait_local_running(site, [offline_new])

    with Probe() as probe:
        for iid, inst in running.items():
            probe.set(iid, inst["endpoint"])
        wait_for(lambda: len(probe.asked) == 3, 10, "every workload answering")
        time.sleep(2.0)
        site.restore()
        restored = time.monotonic()
        took = bed.converge(site, [*ids, offline_new], since=restored)
        time.sleep(0.5)
    assert probe.misses() == 0, probe.errors

    # Usage stops at the agent's last alive mark, at most a reconcile interval (1 s)
    # before the power cut, and starts again with the restarted workloads.
    events, usage = bed.check(site, allowed_gaps=[(killed_at - 1.5, back_at)])
    assert usage.instances == 3
    started = [e for e in bed.site_events(site) if e["kind"] == "agent.started"]
    assert len(started) == 2
    # The power cut is not billed: no usage interval covers the time the site was dead
    # (from the kill to the second agent.started).
    reboot = datetime.fromisoformat(started[1]["at"]).timestamp()
    assert killed_at < reboot < back_at
    billed = bed.usage_within(site, killed_at, reboot)
    assert billed == 0, billed
    restarted = [e for e in bed.site_events(site) if "site restarted" in str(e["data"])]
    assert {e["instance"] for e in restarted} == set(ids)
    print(f"cold boot: converged {took:.2f}s after restore; {events}")
