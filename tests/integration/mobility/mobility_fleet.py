"""A real controller and real agents for the mobility tests: sites on a map, each agent
talking to the controller through a relay that stands for its WAN link (so a site
can be cut off while it keeps running), and a small stateful app."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from cloudlet.testbed.local import LocalAgent, LocalController, wait_for
from cloudlet.testbed.relay import RelayThread

#: Site name -> (latitude, longitude). Lyon-Paris is ~390 km: an estimated RTT of
#: ~8.9 ms against 5 ms at the client's own site, so a 7 ms bound tells them apart.
SITES = {"lyon": (45.76, 4.84), "paris": (48.86, 2.35), "turin": (45.07, 7.69)}
BOUND_MS = 7
UPLOAD_PIECE = 32 * 1024 * 1024

STATEFUL = """
import http.server, os, pathlib, urllib.parse
state = pathlib.Path(os.environ["CLOUDLET_STATE_DIR"])
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
        if "set" in query:
            (state / "token").write_text(query["set"][0])
        counter = state / "count"
        count = int(counter.read_text()) + 1 if counter.exists() else 1
        counter.write_text(str(count))
        token = (state / "token").read_text() if (state / "token").exists() else ""
        body = f"{token} {count}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"""


def stateful_app(tmp_path: Path, name: str = "notes", **extra: Any) -> dict[str, Any]:
    script = tmp_path / f"{name}.py"
    script.write_text(textwrap.dedent(STATEFUL))
    return {
        "name": name,
        "components": [
            {"name": "main", "command": [sys.executable, str(script)], "stateful": True}
        ],
        "resources": {"vcpus": 0.1, "memory_mib": 32, "disk_gib": 0.01},
        "latency_bound_ms": BOUND_MS,
        **extra,
    }


@dataclass
class Fleet:
    controller: LocalController
    api: httpx.Client
    agents: dict[str, LocalAgent] = field(default_factory=dict)
    links: dict[str, RelayThread] = field(default_factory=dict)

    def instance(self, ref: str) -> dict[str, Any]:
        answer = self.api.get(f"/v1/instances/{ref}")
        answer.raise_for_status()
        return answer.json()

    def wait_running_at(self, ref: str, site: str, timeout: float = 60) -> dict[str, Any]:
        def there() -> dict[str, Any] | None:
            item = self.instance(ref)
            assert item["actual_state"] != "failed", item
            ok = item["site"] == site and item["actual_state"] == "running"
            return item if ok and item["endpoint"] else None

        logs = "\n".join(a.proc.log_tail(15) for a in self.agents.values() if a.proc)
        return wait_for(there, timeout, f"instance {ref} running at {site}\n{logs}")

    def site_events(self, site: str, kind: str | None = None) -> list[dict[str, Any]]:
        events = self.api.get("/v1/events", params={"site": site, "limit": 10_000}).json()
        return [e for e in events if e["seq"] > 0 and (kind is None or e["kind"] == kind)]


def upload(api: httpx.Client, path: Path, kind: str, name: str) -> dict[str, Any]:
    """Upload an image or overlay to the controller the way the CLI does."""
    size = path.stat().st_size
    up = api.post("/v1/uploads", json={"kind": kind, "name": name, "size": size})
    assert up.status_code == 201, up.text
    with path.open("rb") as f:
        for offset in range(0, size, UPLOAD_PIECE):  # a base VM's RAM is too big for one PUT
            api.put(
                f"/v1/uploads/{up.json()['id']}",
                params={"offset": offset},
                content=f.read(UPLOAD_PIECE),
                headers={"content-type": "application/octet-stream"},
            ).raise_for_status()
    done = api.post(f"/v1/uploads/{up.json()['id']}/complete")
    assert done.status_code == 201, done.text
    return done.json()


def get(endpoint: str, **params: str) -> str:
    return httpx.get(f"http://{endpoint}/", params=params, timeout=5).text


def serves(endpoint: str) -> bool:
    try:
        get(endpoint)
    except httpx.HTTPError:
        return False
    return True


@contextmanager
def fleet(
    tmp_path: Path, sites: list[str], announce: bool = False, **mobility: str
) -> Iterator[Fleet]:
    """Start a controller and one agent per site (each behind its own relay)."""
    env = {
        "CLOUDLET_CONTROLLER__MOBILITY__INTERVAL_S": "0.3",
        "CLOUDLET_CONTROLLER__MOBILITY__MIN_DWELL_S": "0",
        **{f"CLOUDLET_CONTROLLER__MOBILITY__{k.upper()}": v for k, v in mobility.items()},
    }
    ctl = LocalController(tmp_path / "ctl", offline_grace_s=2, env=env).start()
    api = ctl.client()
    out = Fleet(ctl, api)
    with ExitStack() as stack:
        stack.callback(api.close)
        stack.callback(ctl.stop)
        for name in sites:
            lat, lon = SITES[name]
            created = api.post("/v1/sites", json={"name": name, "latitude": lat, "longitude": lon})
            created.raise_for_status()
            link = stack.enter_context(RelayThread("127.0.0.1", ctl.port))
            # The relay passes TLS through: the agent speaks HTTPS to the controller.
            agent = LocalAgent(
                name,
                tmp_path / name,
                link.url.replace("http://", "https://", 1),
                join_token=created.json()["join_token"]["token"],
                env={
                    "CLOUDLET_AGENT__RECONCILE_INTERVAL_S": "1",
                    "CLOUDLET_AGENT__USAGE_INTERVAL_S": "0.5",
                    "CLOUDLET_AGENT__POLL_WAIT_S": "5",
                    "CLOUDLET_AGENT__BACKOFF_MAX_S": "1",
                    # A VM handoff to a destination that died fails in seconds.
                    "CLOUDLET_AGENT__HANDOFF_RESUME_WITHIN_S": "5",
                    "CLOUDLET_AGENT__ANNOUNCE": str(announce).lower(),
                },
            ).start()
            stack.callback(agent.stop)
            out.agents[name], out.links[name] = agent, link
        for name in sites:
            wait_for(
                lambda n=name: api.get(f"/v1/sites/{n}").json()["availability"] == "online",
                30,
                f"{name} enrolled",
            )
        yield out
