"""Process instances that move: following their client with their state, failing over
when their site is cut off, and a returning site stopping its stale copy by epoch."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from mobility_fleet import SITES, fleet, get, serves, stateful_app

from cloudlet.testbed.local import wait_for

pytestmark = pytest.mark.integration


def test_instance_follows_its_client_with_its_state(tmp_path: Path) -> None:
    with fleet(tmp_path, ["lyon", "paris"]) as f:
        f.api.post("/v1/apps", json=stateful_app(tmp_path)).raise_for_status()
        lat, lon = SITES["lyon"]
        created = f.api.post(
            "/v1/instances",
            json={
                "app": "notes",
                "client_latitude": lat,
                "client_longitude": lon,
                "follow_client": True,
            },
        )
        assert created.status_code == 201, created.text
        item = f.wait_running_at(created.json()["id"], "lyon")
        # Placement explains itself: lyon ranked, paris rejected by the latency bound.
        explained = item["placement"]
        assert [r["name"] for r in explained["ranked"]] == ["lyon"]
        (rejected,) = explained["rejected"]
        assert rejected["name"] == "paris" and rejected["filter"] == "latency"
        assert "7 ms latency bound" in rejected["reason"]
        assert get(item["endpoint"], set="only-in-lyon") == "only-in-lyon 1"
        assert get(item["endpoint"]) == "only-in-lyon 2"
        old = item["endpoint"]

        # The client drives to Paris: lyon is now beyond the bound, paris within it.
        plat, plon = SITES["paris"]
        moved = f.api.put(
            f"/v1/instances/{item['id']}/client", json={"latitude": plat, "longitude": plon}
        )
        assert moved.status_code == 200, moved.text
        item = f.wait_running_at(item["id"], "paris")
        assert item["epoch"] == 1
        # The state came along: the token and the counter continue.
        assert get(item["endpoint"]) == "only-in-lyon 3"
        wait_for(lambda: not serves(old) or old == item["endpoint"], 30, "lyon's copy stopped")

        (handoff,) = f.api.get("/v1/handoffs", params={"instance": item["id"]}).json()
        assert (handoff["source"], handoff["destination"]) == ("lyon", "paris")
        assert handoff["phase"] == "done" and handoff["bytes"] > 0
        assert set(handoff["phases"]) == {"transferred", "done"}
        assert handoff["reason"].startswith("client moved")
        assert item["placement"]["site_id"] != explained["site_id"]

        sent = wait_for(lambda: f.site_events("lyon", "handoff"), 30, "lyon's handoff event")
        received = wait_for(lambda: f.site_events("paris", "handoff"), 30, "paris's event")
        assert sent[0]["data"]["phase"] == "sent"
        assert sent[0]["data"]["bytes"] == handoff["bytes"]
        assert received[0]["data"]["phase"] == "received"
        assert received[0]["data"]["bytes"] == handoff["bytes"]

        # Hysteresis: standing still in Paris moves nothing further.
        f.api.put(f"/v1/instances/{item['id']}/client", json={"latitude": plat, "longitude": plon})
        f.wait_running_at(item["id"], "paris")
        assert len(f.api.get("/v1/handoffs").json()) == 1


def test_move_command_gives_up_on_a_silent_source_then_hands_over(tmp_path: Path) -> None:
    with fleet(tmp_path, ["lyon", "paris"], handoff_timeout_s="3") as f:
        f.api.post("/v1/apps", json=stateful_app(tmp_path)).raise_for_status()
        created = f.api.post("/v1/instances", json={"app": "notes", "site": "lyon"}).json()
        item = f.wait_running_at(created["id"], "lyon")
        get(item["endpoint"], set="kept")
        move = f"/v1/instances/{item['id']}/move"
        assert f.api.post(move, json={"to": "lyon"}).status_code == 409
        assert f.api.post(move, json={"to": "nope"}).status_code == 404

        # Lyon cannot hear the order: the handoff waits, then is given up, and the
        # instance never stopped serving at lyon.
        f.links["lyon"].cut()
        answer = f.api.post(move, json={"to": "paris"})
        assert answer.status_code == 202, answer.text
        assert answer.json()["phase"] == "requested"
        assert f.api.post(move, json={"to": "paris"}).status_code == 409  # one at a time
        wait_for(
            lambda: f.api.get("/v1/handoffs").json()[0]["phase"] == "failed", 30, "handoff failed"
        )
        assert get(item["endpoint"]).startswith("kept ")
        f.links["lyon"].restore()
        again = f.wait_running_at(item["id"], "lyon")
        assert again["epoch"] == 0 and get(again["endpoint"]).startswith("kept ")

        # With the link back, the same command hands the instance over with its state.
        assert f.api.post(move, json={"to": "paris"}).status_code == 202
        moved = f.wait_running_at(item["id"], "paris")
        assert moved["epoch"] == 1
        assert get(moved["endpoint"]).startswith("kept ")
        phases = [h["phase"] for h in f.api.get("/v1/handoffs").json()]
        assert phases == ["failed", "done"]


def test_failover_then_the_returning_site_stops_its_stale_copy(tmp_path: Path) -> None:
    with fleet(tmp_path, ["lyon", "paris"]) as f:
        app = stateful_app(tmp_path, relocatable=True, failover_after_s=3, latency_bound_ms=None)
        f.api.post("/v1/apps", json=app).raise_for_status()
        created = f.api.post("/v1/instances", json={"app": "notes", "site": "lyon"}).json()
        item = f.wait_running_at(created["id"], "lyon")
        stale = item["endpoint"]
        lyon = f.agents["lyon"]
        wait_for(lambda: lyon.health()["outbox_depth"] == 0, 30, "lyon's outbox drained")
        usage_before = len(f.site_events("lyon", "usage"))

        # Lyon's link is cut: the site keeps running its copy (autonomy) ...
        f.links["lyon"].cut()
        wait_for(
            lambda: f.api.get("/v1/sites/lyon").json()["availability"] == "offline", 30, "offline"
        )
        assert serves(stale)
        # ... and after failover_after_s the instance restarts at paris, epoch 1.
        item = f.wait_running_at(item["id"], "paris", timeout=60)
        assert item["epoch"] == 1 and item["endpoint"] != stale
        (handoff,) = f.api.get("/v1/handoffs", params={"instance": item["id"]}).json()
        assert handoff["kind"] == "relocate" and handoff["reason"].startswith("failover")
        wait_for(lambda: lyon.health()["outbox_depth"] >= 4, 30, "usage recorded offline")
        pending = lyon.health()["outbox_depth"]

        # The link returns: lyon learns the instance left (by its epoch) and stops the copy.
        f.links["lyon"].restore()
        wait_for(lambda: not serves(stale), 30, "lyon's stale copy stopped")
        assert serves(item["endpoint"])
        wait_for(lambda: lyon.health()["outbox_depth"] == 0, 30, "lyon's outbox drained")
        # What lyon recorded during the cut arrived, each event once.
        events = f.site_events("lyon")
        seqs = [e["seq"] for e in events]
        assert len(seqs) == len(set(seqs))
        assert len(f.site_events("lyon", "usage")) > usage_before
        assert len(events) >= pending
        # The controller never took lyon's stale reports for the instance's state.
        final = f.instance(item["id"])
        assert final["site"] == "paris" and final["actual_state"] == "running"
        listed = f.api.get("/v1/instances", params={"site": "lyon"}).json()
        assert listed == []


def test_failover_starts_from_the_last_checkpoint(tmp_path: Path) -> None:
    with fleet(tmp_path, ["lyon", "paris"]) as f:
        app = stateful_app(
            tmp_path, relocatable=True, failover_after_s=3, checkpoint_interval_s=1,
            latency_bound_ms=None,
        )  # fmt: skip
        f.api.post("/v1/apps", json=app).raise_for_status()
        created = f.api.post("/v1/instances", json={"app": "notes", "site": "lyon"}).json()
        item = f.wait_running_at(created["id"], "lyon")
        iid = item["id"]
        assert get(item["endpoint"], set="before").startswith("before")
        written = time.time()

        def checkpointed() -> dict[str, Any] | None:
            kept = f.api.get(f"/v1/instances/{iid}/checkpoints").json()
            fresh = [c for c in kept if datetime.fromisoformat(c["taken_at"]).timestamp() > written]
            return fresh[0] if fresh else None

        checkpoint = wait_for(checkpointed, 30, "a checkpoint after the write")
        assert checkpoint["site"] == "lyon" and checkpoint["kind"] == "process"
        wait_for(
            lambda: (
                {"taken", "sent"}
                <= {e["data"]["phase"] for e in f.site_events("lyon", "checkpoint")}
            ),
            30,
            "lyon's checkpoint events",
        )
        # Lyon is cut off, then written to, then dies: what came after the last checkpoint
        # the controller holds is lost, what came before survives the failover.
        f.links["lyon"].cut()
        time.sleep(1.5)  # a checkpoint or two more, which cannot reach the controller
        assert get(item["endpoint"], set="after").startswith("after")
        f.agents["lyon"].proc.kill()  # type: ignore[union-attr]
        moved = f.wait_running_at(iid, "paris", timeout=60)
        assert moved["epoch"] == 1
        assert get(moved["endpoint"]).startswith("before ")
        token = tmp_path / "paris" / "state" / iid / "main" / "token"
        assert token.read_text() == "before"
        (handoff,) = f.api.get("/v1/handoffs", params={"instance": iid}).json()
        assert handoff["kind"] == "relocate" and handoff["bytes"] > 0
        events = f.api.get("/v1/events", params={"kind": "handoff.transferred"}).json()
        (failover,) = [e for e in events if e["data"].get("instance") == iid]
        assert failover["data"]["checkpoint"] in {
            c["id"] for c in f.api.get(f"/v1/instances/{iid}/checkpoints").json()
        }
        assert failover["data"]["checkpoint_age_s"] > 0
        wait_for(
            lambda: any(
                e["data"]["phase"] == "restored" for e in f.site_events("paris", "checkpoint")
            ),
            30,
            "paris's restored event",
        )
        # Paris checkpoints the instance from now on, at its epoch.
        wait_for(
            lambda: f.api.get(f"/v1/instances/{iid}/checkpoints").json()[0]["site"] == "paris",
            30,
            "a checkpoint from paris",
        )


def test_drain_moves_everything_off_a_site_by_handoff(tmp_path: Path) -> None:
    with fleet(tmp_path, ["lyon", "paris"]) as f:
        app = stateful_app(tmp_path, latency_bound_ms=None)
        f.api.post("/v1/apps", json=app).raise_for_status()
        ids = []
        for n in range(2):
            created = f.api.post("/v1/instances", json={"app": "notes", "site": "lyon"}).json()
            item = f.wait_running_at(created["id"], "lyon")
            get(item["endpoint"], set=f"kept-{n}")
            ids.append(item["id"])
        cli = [sys.executable, "-m", "cloudlet.cli", "--url", f.controller.url,
               "--token", f.controller.token]  # fmt: skip
        env = {**os.environ, **f.controller.cli_env()}
        out = subprocess.run(
            [*cli, "site", "drain", "lyon"], capture_output=True, text=True, timeout=60, env=env
        )
        assert out.returncode == 0, out.stderr
        assert "draining" in out.stdout
        for n, ref in enumerate(ids):
            item = f.wait_running_at(ref, "paris")
            assert get(item["endpoint"]).startswith(f"kept-{n} ")
        assert f.api.get("/v1/sites/lyon").json()["state"] == "draining"
        refused = f.api.post("/v1/instances", json={"app": "notes"})
        assert refused.status_code == 201 and refused.json()["site"] == "paris"
        # `instance show` says why it moved and how the sites scored.
        out = subprocess.run(
            [*cli, "instance", "show", ids[0]], capture_output=True, text=True, timeout=60, env=env
        )
        assert out.returncode == 0, out.stderr
        assert "moved: drain of lyon" in out.stdout
        assert "chosen paris" in out.stdout
