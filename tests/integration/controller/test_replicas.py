"""Two controller replicas on one real PostgreSQL server: a change through one wakes a
long poll held on the other (LISTEN/NOTIFY), one replica leads the fleet-wide loops
and another takes over when it dies, and agents given both replicas carry on."""

from __future__ import annotations

import ssl
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloudlet import pki
from cloudlet.testbed.local import LocalAgent, LocalController, wait_for
from postgres import create_database

#: The long poll's own wait: a wake-up must come long before it ends.
POLL_WAIT_S = 20


@dataclass
class Replicas:
    a: LocalController
    b: LocalController

    def api(self, ctl: LocalController) -> httpx.Client:
        return ctl.client(token=self.a.token)

    def role(self, ctl: LocalController) -> str | None:
        try:
            return httpx.get(f"{ctl.url}/healthz", timeout=2, verify=ctl.verify).json()["role"]
        except httpx.HTTPError:
            return None


@pytest.fixture
def replicas(postgres_base_url: str, tmp_path: Path) -> Iterator[Replicas]:
    url = create_database(postgres_base_url, f"cloudlet_replicas_{tmp_path.name[-20:]}")
    with ExitStack() as stack:
        # The first start migrates; the second finds the schema current.
        a = LocalController(tmp_path / "a", database_url=url, offline_grace_s=3).start()
        stack.callback(a.stop)
        # One CA for both, as docs/tls.md asks of replicas: the agent pins it at join.
        b = LocalController(
            tmp_path / "b", database_url=url, offline_grace_s=3, env=a.ca_env()
        ).start()
        stack.callback(b.stop)
        yield Replicas(a, b)


def _app(api: httpx.Client, tmp_path: Path) -> None:
    script = tmp_path / "serve.py"
    script.write_text(
        "import http.server, os\n"
        "http.server.HTTPServer(('127.0.0.1', int(os.environ['PORT'])),"
        " http.server.SimpleHTTPRequestHandler).serve_forever()\n"
    )
    body = {
        "name": "web",
        "components": [{"name": "main", "command": [sys.executable, str(script)]}],
        "resources": {"vcpus": 0.1, "memory_mib": 32, "disk_gib": 0.01},
    }
    api.post("/v1/apps", json=body).raise_for_status()


def test_a_change_through_one_replica_wakes_a_long_poll_held_on_the_other(
    replicas: Replicas, tmp_path: Path
) -> None:
    a, b = replicas.api(replicas.a), replicas.api(replicas.b)
    made = a.post("/v1/sites", json={"name": "oslo"})
    made.raise_for_status()
    # Enrolled by hand, as an agent would: a CSR, then mutual TLS with what it gives.
    key = pki.new_key()
    enrolled = httpx.post(
        f"{replicas.b.url}/v1/agent/enroll",
        json={
            "join_token": made.json()["join_token"]["token"],
            "csr": pki.make_csr(key, "oslo").decode(),
        },
        verify=replicas.b.verify,
    )
    enrolled.raise_for_status()
    credential, revision = enrolled.json()["credential"], enrolled.json()["revision"]
    cert, key_file = tmp_path / "oslo.crt", tmp_path / "oslo.key"
    cert.write_text(enrolled.json()["certificates"]["certificate"])
    key_file.write_bytes(pki.key_pem(key))
    mtls = ssl.create_default_context(cafile=replicas.b.ca_file)
    mtls.load_cert_chain(cert, key_file)
    _app(a, tmp_path)
    answer: dict[str, Any] = {}

    def long_poll() -> None:
        answer["doc"] = httpx.get(
            f"{replicas.b.url}/v1/agent/desired",
            params={"since": revision, "wait": POLL_WAIT_S},
            headers={"Authorization": f"Bearer {credential}"},
            timeout=POLL_WAIT_S + 10,
            verify=mtls,
        ).json()
        answer["at"] = time.monotonic()

    poller = threading.Thread(target=long_poll)
    poller.start()
    time.sleep(1.0)  # the poll is held on b by now
    assert "doc" not in answer
    a.post("/v1/instances", json={"app": "web", "site": "oslo"}).raise_for_status()
    changed_at = time.monotonic()
    poller.join(POLL_WAIT_S + 15)
    # Woken by the change, not by the poll's own end: nothing else on b looks.
    woke_after = answer["at"] - changed_at
    assert woke_after < POLL_WAIT_S / 4, f"woken {woke_after:.2f} s after the change"
    assert [i["app"] for i in answer["doc"]["instances"]] == ["web"]
    print(f"long poll on replica b woken {woke_after * 1000:.0f} ms after a change through a")
    a.close()
    b.close()


def test_one_replica_leads_and_agents_carry_on_when_it_dies(
    replicas: Replicas, tmp_path: Path
) -> None:
    roles = wait_for(
        lambda: (r := [replicas.role(replicas.a), replicas.role(replicas.b)]).count("leader") and r,
        15,
        "a leader among the replicas",
    )
    assert sorted(roles) == ["leader", "standby"], roles
    leader, other = (replicas.a, replicas.b) if roles[0] == "leader" else (replicas.b, replicas.a)
    api = replicas.api(other)
    made = api.post("/v1/sites", json={"name": "bergen"})
    made.raise_for_status()
    _app(api, tmp_path)
    # The agent is given both replicas, the leader first: it talks to the leader.
    agent = LocalAgent(
        "bergen",
        tmp_path / "bergen",
        f"{leader.url},{other.url}",
        join_token=made.json()["join_token"]["token"],
        env={"CLOUDLET_AGENT__POLL_WAIT_S": "5", "CLOUDLET_AGENT__BACKOFF_MAX_S": "1"},
    ).start()
    try:
        wait_for(
            lambda: api.get("/v1/sites/bergen").json()["availability"] == "online",
            30,
            "bergen online",
        )
        leader.kill()
        # The standby takes the lead once PostgreSQL ends the dead one's session.
        wait_for(lambda: replicas.role(other) == "leader", 30, "the standby leading")
        ref = api.post("/v1/instances", json={"app": "web", "site": "bergen"}).json()["id"]

        def running() -> bool:
            return api.get(f"/v1/instances/{ref}").json()["actual_state"] == "running"

        wait_for(
            running, 30, f"the instance running through the other replica\n{agent.proc.log_tail()}"
        )
        # Its reports reach the surviving replica: the site stays online past the grace.
        time.sleep(4)
        assert api.get("/v1/sites/bergen").json()["availability"] == "online"
        events = api.get("/v1/events", params={"site": "bergen", "limit": 1000}).json()
        assert not [e for e in events if e["kind"] == "site.offline"], events
    finally:
        agent.stop()
        api.close()
