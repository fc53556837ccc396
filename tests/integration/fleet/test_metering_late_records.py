"""Metering end to end: a real controller, a real agent behind a link that is cut.

An instance runs; the link goes down while the agent keeps recording usage (and the
agent restarts before anything it recorded offline was acknowledged); a report of
a period that ends during the cut is taken; the link comes back; the records arrive
once, and the new report of the same closed period differs from the first exactly
by the late records it lists. Bytes of a pre-staged image count for its project;
an instance a client token started at the site is metered to the token's project.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloudlet.testbed.local import LocalAgent, LocalController, wait_for
from cloudlet.testbed.relay import RelayThread

pytestmark = pytest.mark.integration

#: Every amount a report shows is rounded to 6 places: a difference of sums may be
#: off by one unit per rounded term.
UNIT = Decimal("0.000001")


def _app(tmp_path: Path, name: str) -> dict[str, Any]:
    script = tmp_path / "serve.py"
    script.write_text(
        textwrap.dedent(
            """
            import http.server, os
            http.server.HTTPServer(
                ("127.0.0.1", int(os.environ["PORT"])), http.server.BaseHTTPRequestHandler
            ).serve_forever()
            """
        )
    )
    return {
        "name": name,
        "components": [{"name": "main", "command": [sys.executable, str(script)]}],
        "resources": {"vcpus": 0.5, "memory_mib": 512, "disk_gib": 0.01},
    }


def _cli(controller: LocalController, token: str, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDLET_")}
    env |= {**controller.cli_env(), "CLOUDLET_TOKEN": token}
    done = subprocess.run(
        [sys.executable, "-m", "cloudlet.cli", *args], capture_output=True, text=True, env=env,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def _iso(when: datetime) -> str:
    return when.isoformat()


def _report(api: httpx.Client, since: datetime, until: datetime, **extra: str) -> dict[str, Any]:
    params = {"project": "fire", "from": _iso(since), "to": _iso(until), **extra}
    r = api.get("/v1/usage", params=params)
    assert r.status_code == 200, r.text
    return r.json()


def _line(report: dict[str, Any], app: str) -> dict[str, Any]:
    return next(line for line in report["lines"] if line["app"] == app)


def _agent_usage(store: Path) -> dict[int, float]:
    """The usage records the site journalled (seq -> seconds), read from its own store."""
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as conn:
        rows = conn.execute(
            "SELECT seq, json_extract(data, '$.seconds') FROM event_log "
            "WHERE kind = 'usage' AND merged_into IS NULL"
        ).fetchall()
    return {seq: seconds for seq, seconds in rows}


def _outbox_max(store: Path) -> int:
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as conn:
        return int(conn.execute("SELECT coalesce(max(seq), 0) FROM outbox").fetchone()[0])


def _upload_image(api: httpx.Client, data: bytes) -> str:
    created = api.post("/v1/uploads", json={"kind": "image", "name": "base", "size": len(data)})
    assert created.status_code == 201, created.text
    uid = created.json()["id"]
    api.put(f"/v1/uploads/{uid}", params={"offset": 0}, content=data).raise_for_status()
    done = api.post(f"/v1/uploads/{uid}/complete")
    assert done.status_code == 201, done.text
    return done.json()["digest"]


def test_offline_records_arrive_once_and_change_a_closed_period_only_as_late_records(
    tmp_path: Path,
) -> None:
    # Plain HTTP: the agent reaches the controller through a cutting relay (http:// URL);
    # what is metered does not depend on the transport (TLS: fleet/test_tls.py).
    controller = LocalController(tmp_path / "controller", insecure=True).start()
    relay = RelayThread("127.0.0.1", controller.port).start()
    agent: LocalAgent | None = None
    clients: list[httpx.Client] = []
    try:
        member = controller.create_token("fire-ops", project="fire", role="member")
        stranger = controller.create_token("other", project="other", role="reader")
        admin, api, outsider = (controller.client(t) for t in (None, member, stranger))
        clients += [admin, api, outsider]
        join = admin.post("/v1/sites", json={"name": "lyon"}).json()["join_token"]["token"]
        agent = LocalAgent(
            "lyon", tmp_path / "lyon", relay.url, join,
            env={"CLOUDLET_AGENT__USAGE_INTERVAL_S": "0.5", "CLOUDLET_AGENT__ANNOUNCE": "false"},
        ).start()  # fmt: skip
        store = agent.data_dir / "agent.db"
        wait_for(
            lambda: admin.get("/v1/sites/lyon").json()["availability"] == "online",
            30,
            f"the site online\n{agent.proc.log_tail() if agent.proc else ''}",
        )
        api.post("/v1/apps", json=_app(tmp_path, "maps")).raise_for_status()
        for plan, body in (
            ("default", {"currency": "EUR", "instance_hour": "3.6"}),
            ("projects/fire/apps/maps", {"currency": "EUR", "vcpu_hour": "7.2"}),
            ("projects/fire", {"currency": "EUR", "gib_fetched": "2"}),
        ):
            r = admin.put(f"/v1/prices/{plan}", json=body)
            assert r.status_code == 200, r.text
        # Only the provider sets prices; a tenant reads what applies to it.
        assert api.put("/v1/prices/default", json={"currency": "EUR"}).status_code == 403
        assert {p["app"] for p in api.get("/v1/prices").json()} == {None, "maps"}

        period_start = datetime.now(UTC).replace(microsecond=0)
        created = api.post("/v1/instances", json={"app": "maps", "site": "lyon"})
        created.raise_for_status()
        instance_id = created.json()["id"]

        def usage_arrived() -> bool:
            params = {"kind": "usage", "instance": instance_id}
            return len(api.get("/v1/events", params=params).json()) >= 2

        wait_for(usage_arrived, 60, f"usage records\n{agent.proc.log_tail() if agent.proc else ''}")

        # Bytes of the project's image sent to the site, counted at the controller.
        image = os.urandom(3 * 1024 * 1024 + 17)
        digest = _upload_image(api, image)
        staged = admin.post("/v1/sites/lyon/images", json={"image": digest})
        assert staged.status_code == 202, staged.text

        def fetched() -> bool:
            rows = admin.get("/v1/sites/lyon/images").json()
            return any(r["digest"] == digest and r["complete"] for r in rows)

        wait_for(fetched, 60, "the site fetching the image")

        # An instance a client token starts at the site is the token's project's.
        token = api.post("/v1/client-tokens", json={"project": "fire", "apps": ["maps"]})
        token.raise_for_status()
        local = wait_for(agent.local_api, 30, "the site-local API")
        started = httpx.post(
            f"{local}/v1/local/instances", json={"app": "maps", "name": "tablet"},
            headers={"authorization": f"Bearer {token.json()['token']}"}, timeout=10,
        )  # fmt: skip
        assert started.status_code == 202, started.text
        tablet = started.json()["id"]
        wait_for(
            lambda: api.get("/v1/events", params={"kind": "usage", "instance": tablet}).json(),
            60,
            "the token's instance's usage",
        )

        # The link goes down; the site keeps recording.
        relay.cut()
        cut_at = datetime.now(UTC)
        period_end = cut_at + timedelta(seconds=3)
        wait_for(lambda: agent.health()["controller_reachable"] is False, 30, "the cut seen")
        wait_for(lambda: datetime.now(UTC) > period_end + timedelta(seconds=2), 10, "time")
        # The agent restarts before the controller acknowledged what it recorded offline.
        waiting = _outbox_max(store)
        assert waiting > 0
        agent.stop()
        agent.join_token = None
        agent.start()
        wait_for(lambda: agent.health() is not None, 30, "the agent back")
        wait_for(lambda: _outbox_max(store) > waiting, 30, "more records offline")

        first = _report(api, period_start, period_end)
        assert first["closed"] is True
        # Only its own project, and only one that exists.
        params = {"project": "fire", "from": _iso(period_start), "to": _iso(period_end)}
        assert outsider.get("/v1/usage", params=params).status_code == 403
        assert admin.get("/v1/usage", params={**params, "project": "nope"}).status_code == 404

        relay.restore()
        last_offline = _outbox_max(store)

        def caught_up() -> bool:
            seqs = {e["seq"] for e in admin.get("/v1/events", params={
                "site": "lyon", "kind": "usage", "limit": 10000}).json()}  # fmt: skip
            return last_offline in seqs or max(seqs, default=0) > last_offline

        wait_for(caught_up, 60, "the offline records arriving")
        second = _report(api, period_start, period_end)

        # The records made offline in the period are the late ones that arrived since.
        first_as_of = datetime.fromisoformat(first["as_of"])
        new_late = [
            r for r in second["late"] if datetime.fromisoformat(r["received_at"]) > first_as_of
        ]
        offline = [r for r in new_late if datetime.fromisoformat(r["recorded_at"]) < period_end]
        assert offline, second["late"]
        old_keys = {(r["site"], r["seq"]) for r in first["late"]}
        assert old_keys <= {(r["site"], r["seq"]) for r in second["late"]}
        # ...and the report changed by exactly what they add.
        for field in ("instance_hours", "vcpu_hours", "gib_hours", "cost"):
            grew = Decimal(_line(second, "maps")[field]) - Decimal(_line(first, "maps")[field])
            added = sum((Decimal(r[field]) for r in new_late), Decimal(0))
            assert abs(grew - added) <= UNIT * (len(new_late) + 1), (field, grew, added)
        total = Decimal(second["totals"][0]["cost"]) - Decimal(first["totals"][0]["cost"])
        assert abs(total - sum(Decimal(r["cost"]) for r in new_late)) <= UNIT * (len(new_late) + 2)
        # The first report, taken again as of its moment, is unchanged.
        assert _report(api, period_start, period_end, as_of=first["as_of"]) == first

        # Counted once: cut the link again so that nothing more arrives (a report in
        # flight may be stored with its ack lost: the agent sends it again later), and
        # every record the controller holds is one the site journalled, billed once
        # across the agent's restart and the resends.
        def held_at_controller() -> dict[int, float]:
            params = {"site": "lyon", "kind": "usage", "limit": 10000}
            return {
                e["seq"]: e["data"]["seconds"]
                for e in admin.get("/v1/events", params=params).json()
            }

        journalled = set(_agent_usage(store))
        wait_for(lambda: journalled <= set(held_at_controller()), 60, "the journal arriving")
        relay.cut()
        wait_for(lambda: agent.health()["controller_reachable"] is False, 30, "the second cut")
        held = held_at_controller()
        journal = _agent_usage(store)
        assert all(journal[seq] == seconds for seq, seconds in held.items())
        everything = _report(api, period_start - timedelta(hours=1), datetime.now(UTC))
        billed = sum(Decimal(line["instance_hours"]) for line in everything["lines"]) * 3600
        ran = Decimal(str(sum(held.values())))
        assert abs(billed - ran) <= Decimal("0.01"), (billed, ran)
        maps = _line(everything, "maps")
        assert maps["plan"]["scope"] == "app"
        # The app's plan: 0.5 vCPU at 7.2 EUR per vCPU-hour, 1 EUR per 1000 s.
        assert abs(Decimal(maps["cost"]) - ran / 1000) <= Decimal("0.001")
        [fetch] = everything["fetches"]
        assert (fetch["site"], fetch["kind"], fetch["bytes"]) == ("lyon", "image", len(image))
        assert fetch["plan"]["scope"] == "project"

        # The tablet's instance: metered to the token's project, by the controller too.
        with sqlite3.connect(controller.data_dir / "controller.db") as db:
            projects = db.execute(
                "SELECT DISTINCT project FROM usage_records WHERE instance_id = ?", (tablet,)
            ).fetchall()
        assert projects == [("fire",)]

        # The same report from the CLI, as a member would take it.
        bounds = ["--from", _iso(period_start), "--to", _iso(period_end)]
        as_of = ["--as-of", second["as_of"]]
        shown = json.loads(
            _cli(controller, member, "usage", "report", "-p", "fire", *bounds, *as_of, "--json")
        )
        assert shown == second
        rows = list(csv.DictReader(io.StringIO(
            _cli(controller, member, "usage", "report", "-p", "fire", *bounds, *as_of, "--csv")
        )))  # fmt: skip
        assert [r["cost"] for r in rows if r["section"] == "total"] == [
            t["cost"] for t in second["totals"]
        ]
        assert len([r for r in rows if r["section"] == "late"]) == len(second["late"])
        text = _cli(controller, member, "usage", "report", "-p", "fire", *bounds)
        assert "late: records that arrived after the period ended" in text
        listed = json.loads(_cli(controller, member, "price", "list", "--json"))
        assert {(p["project"], p["app"]) for p in listed} == {
            (None, None),
            ("fire", "maps"),
            ("fire", None),
        }
    finally:
        for client in clients:
            client.close()
        if agent is not None:
            agent.stop()
        relay.stop()
        controller.stop()
