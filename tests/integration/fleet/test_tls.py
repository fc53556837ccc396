"""A site's whole TLS life with a real controller and real agents over HTTPS.

Join with a CSR (the CA learnt by its fingerprint), mutual TLS for every sync, the agent
endpoints refusing a request without a client certificate, with another site's, or
with one of another CA; renewal before expiry (certificates live 20 s here); a site
offline past its expiry re-joining with a new token; a re-join and a decommission
revoking; the site-local API over HTTPS verified against the CA from ``GET /v1/ca``.
"""

from __future__ import annotations

import sqlite3
import ssl
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509

from cloudlet import pki
from cloudlet.agent.store import CREDENTIAL
from cloudlet.client._connect import probe_rtt
from cloudlet.testbed.local import LocalAgent, LocalController, wait_for

pytestmark = pytest.mark.integration

VALIDITY_S = 20
AGENT_ENV = {"CLOUDLET_AGENT__ANNOUNCE": "false"}


@dataclass
class World:
    tmp: Path
    ctl: LocalController
    api: httpx.Client
    agents: dict[str, LocalAgent]

    def add_site(self, name: str) -> LocalAgent:
        token = self.api.post("/v1/sites", json={"name": name}).json()["join_token"]["token"]
        agent = LocalAgent(name, self.tmp / name, self.ctl.url, join_token=token, env=AGENT_ENV)
        self.agents[name] = agent.start()
        return agent

    def site(self, name: str) -> dict[str, Any]:
        return self.api.get(f"/v1/sites/{name}").json()

    def wait_online(self, name: str, timeout: float = 60) -> None:
        agent = self.agents[name]
        wait_for(
            lambda: (
                self.site(name)["availability"] == "online"
                and (agent.health() or {}).get("last_report_at")
            ),
            timeout,
            f"{name} online\n{agent.proc.log_tail() if agent.proc else ''}",
        )

    def join_token(self, name: str) -> str:
        return self.api.post(f"/v1/sites/{name}/join-tokens", json={}).json()["token"]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    env = {"CLOUDLET_CONTROLLER__TLS__SITE_CERT_VALIDITY_S": str(VALIDITY_S)}
    ctl = LocalController(tmp_path / "ctl", offline_grace_s=3, insecure=False, env=env).start()
    w = World(tmp_path, ctl, ctl.client(), {})
    try:
        yield w
    finally:
        for agent in w.agents.values():
            agent.stop()
        ctl.stop()
        w.api.close()


def _tls(agent: LocalAgent) -> Path:
    return agent.data_dir / "tls"


def _cert(agent: LocalAgent, name: str = "site.crt") -> x509.Certificate:
    return pki.load_cert((_tls(agent) / name).read_bytes())


def _credential(agent: LocalAgent) -> str:
    with sqlite3.connect(agent.data_dir / "agent.db") as db:
        (value,) = db.execute("SELECT value FROM meta WHERE key = ?", (CREDENTIAL,)).fetchone()
    return value


def _context(ctl: LocalController, cert: Path | None = None, key: Path | None = None) -> Any:
    ctx = ssl.create_default_context(cafile=ctl.ca_file)
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


def _pull(ctl: LocalController, credential: str, ctx: ssl.SSLContext) -> httpx.Response:
    headers = {"Authorization": f"Bearer {credential}"}
    url = f"{ctl.url}/v1/agent/desired?since=0&wait=0"
    with httpx.Client(verify=ctx, timeout=10) as http:
        return http.get(url, headers=headers)


def _own(agent: LocalAgent) -> tuple[Path, Path]:
    return _tls(agent) / "site.crt", _tls(agent) / "site.key"


def _identity(
    tmp: Path, name: str, ca: pki.CertificateAuthority, site_id: str
) -> tuple[Path, Path]:
    key = pki.new_key()
    csr = pki.load_csr(pki.make_csr(key, name).decode())
    cert, key_file = tmp / f"{name}.crt", tmp / f"{name}.key"
    cert.write_bytes(pki.cert_pem(ca.issue_site(csr, site_id, name, 600).cert))
    key_file.write_bytes(pki.key_pem(key))
    return cert, key_file


def _certificates(ctl: LocalController, site_id: str) -> list[tuple[str, str, str | None]]:
    """The site's certificates that have not expired: serial, kind, revoked_at."""
    with sqlite3.connect(ctl.data_dir / "controller.db") as db:
        rows = db.execute(
            "SELECT serial, kind, revoked_at, not_after FROM site_certificates WHERE site_id = ?",
            (site_id,),
        ).fetchall()
    now = datetime.now(UTC)
    return [
        (serial, kind, revoked)
        for serial, kind, revoked, not_after in rows
        if datetime.fromisoformat(not_after).replace(tzinfo=UTC) > now
    ]


def test_a_sites_tls_life(world: World) -> None:
    ctl = world.ctl
    lyon, nice = world.add_site("lyon"), world.add_site("nice")
    world.wait_online("lyon")
    world.wait_online("nice")
    lyon_id, nice_id = world.site("lyon")["id"], world.site("nice")["id"]

    # Join: keys made at the site, kept 0600; the CA pinned is the controller's.
    for name in ("ca.crt", "site.key", "site.crt", "local.key", "local.crt"):
        assert stat.S_IMODE((_tls(lyon) / name).stat().st_mode) == 0o600, name
    served = httpx.get(f"{ctl.url}/v1/ca", verify=ctl.verify).json()
    assert (_tls(lyon) / "ca.crt").read_text() == served["certificate"]
    assert served["fingerprint"] == pki.fingerprint(pki.load_cert(ctl.ca_file.read_bytes()))
    assert _cert(lyon).subject.rfc4514_string() == f"CN={lyon_id}"

    # The agent endpoints want the credential's own site's certificate.
    credential = _credential(lyon)
    assert _pull(ctl, credential, _context(ctl, *_own(lyon))).status_code == 200
    bare = _pull(ctl, credential, _context(ctl))
    assert bare.status_code == 401 and "client certificate" in bare.json()["detail"]
    crossed = _pull(ctl, credential, _context(ctl, *_own(nice)))
    assert crossed.status_code == 401 and "another site" in crossed.json()["detail"]
    # A certificate of another CA, even naming the right site, fails the handshake.
    stranger = _identity(world.tmp, "stranger", pki.CertificateAuthority.generate(), lyon_id)
    with pytest.raises(httpx.TransportError):
        _pull(ctl, credential, _context(ctl, *stranger))
    # Users need no certificate: a bearer token over plain server-verified TLS.
    assert world.api.get("/v1/sites").status_code == 200

    # The site-local API serves HTTPS with a certificate of the same CA.
    local = lyon.local_api()
    assert local is not None and local.startswith("https://")
    assert httpx.get(f"{local}/healthz", verify=ctl.verify).status_code == 200
    assert probe_rtt(local, verify=ctl.verify) is not None
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{local}/healthz", verify=True)  # not a certificate the system trusts
    assert _cert(lyon, "local.crt").issuer == pki.load_cert(ctl.ca_file.read_bytes()).subject

    # Renewal before expiry: new certificates, and the site stays in sync with them.
    first, first_local = _cert(lyon).serial_number, _cert(lyon, "local.crt").serial_number
    wait_for(lambda: _cert(lyon).serial_number != first, VALIDITY_S * 2, f"renewal\n{lyon.proc}")
    wait_for(lambda: _cert(lyon, "local.crt").serial_number != first_local, 10, "local renewal")
    time.sleep(1)  # let the agent's next report go over the new certificate's connection
    world.wait_online("lyon")
    assert _pull(ctl, credential, _context(ctl, *_own(lyon))).status_code == 200
    assert httpx.get(f"{local}/healthz", verify=ctl.verify).status_code == 200

    # Offline past expiry: refused, until the operator gives a new one-time token.
    nice.stop()
    expired_at = _cert(nice).not_valid_after_utc.timestamp()
    time.sleep(max(0.0, expired_at - time.time() + 1))
    nice.join_token = None
    nice.start()
    wait_for(lambda: "re-joins with a new token" in nice.proc.log_tail(200), 30, "expiry noticed")
    nice.stop()
    old_serial = format(_cert(nice).serial_number, "x")
    nice.join_token = world.join_token("nice")
    nice.start()
    world.wait_online("nice")
    assert format(_cert(nice).serial_number, "x") != old_serial

    # A re-join revokes the site's certificates: lyon's own, not yet expired, with the
    # new credential of a join made here, is refused.
    key = pki.new_key()
    answer = httpx.post(
        f"{ctl.url}/v1/agent/enroll",
        json={
            "join_token": world.join_token("lyon"),
            "csr": pki.make_csr(key, "lyon").decode(),
        },
        verify=ctl.verify,
    )
    assert answer.status_code == 201, answer.text
    joined = answer.json()
    assert joined["certificates"]["ca_certificate"] == served["certificate"]
    revoked = _pull(ctl, joined["credential"], _context(ctl, *_own(lyon)))
    assert revoked.status_code == 401 and "revoked" in revoked.json()["detail"]
    mine = world.tmp / "rejoined.crt", world.tmp / "rejoined.key"
    mine[0].write_text(joined["certificates"]["certificate"])
    mine[1].write_bytes(pki.key_pem(key))
    assert _pull(ctl, joined["credential"], _context(ctl, *mine)).status_code == 200

    # Decommissioning revokes every certificate the site holds.
    world.api.post("/v1/sites/lyon/decommission", params={"force": "true"}).raise_for_status()
    assert _pull(ctl, joined["credential"], _context(ctl, *mine)).status_code == 401
    current = _certificates(ctl, lyon_id)
    assert current and all(revoked is not None for *_, revoked in current), current
    assert {kind for _, kind, _ in current} == {"site", "local"}
    assert all(revoked is None for *_, revoked in _certificates(ctl, nice_id))


def test_enroll_without_a_csr_is_refused_over_tls(world: World) -> None:
    token = world.api.post("/v1/sites", json={"name": "bare"}).json()["join_token"]["token"]
    answer = httpx.post(
        f"{world.ctl.url}/v1/agent/enroll", json={"join_token": token}, verify=world.ctl.verify
    )
    assert answer.status_code == 422 and "csr" in answer.json()["detail"]
    bad = httpx.post(
        f"{world.ctl.url}/v1/agent/enroll",
        json={"join_token": token, "csr": "-----BEGIN CERTIFICATE REQUEST-----\nxx\n"},
        verify=world.ctl.verify,
    )
    assert bad.status_code == 422
    # Nothing half-done: the token still works.
    good = httpx.post(
        f"{world.ctl.url}/v1/agent/enroll",
        json={"join_token": token, "csr": pki.make_csr(pki.new_key(), "x").decode()},
        verify=world.ctl.verify,
    )
    assert good.status_code == 201


def test_agent_refuses_a_controller_with_another_ca(world: World, tmp_path: Path) -> None:
    token = world.api.post("/v1/sites", json={"name": "wary"}).json()["join_token"]["token"]
    agent = LocalAgent(
        "wary",
        tmp_path / "wary",
        world.ctl.url,
        join_token=token,
        env=AGENT_ENV,
        extra_args=["--ca-fingerprint", "00" * 32],
    )
    agent._tls_args = lambda: []  # type: ignore[method-assign]
    world.agents["wary"] = agent.start()
    wait_for(lambda: not agent.proc.alive, 30, "the agent to give up")  # type: ignore[union-attr]
    assert "fingerprint" in agent.proc.log_tail()  # type: ignore[union-attr]
    assert world.site("wary")["state"] == "registered"
