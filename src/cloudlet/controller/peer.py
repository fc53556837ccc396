"""Client certificates at the controller: uvicorn's HTTP protocol, which hands the
verified peer certificate to the app, and the check the agent endpoints make of it.

TLS asks for a client certificate but does not require one (CERT_OPTIONAL), so that
users with bearer tokens need none; one that is presented must chain to the CA, which
the handshake checks. The certificate is parsed once per connection, not per request
(agents keep their connections alive), and put in each request's scope as
``scope["extensions"]["tls"]["cloudlet.peer"]`` (a :class:`cloudlet.pki.PeerCert`).
"""

from __future__ import annotations

import asyncio
import math
import socket
import ssl
import time
from collections.abc import MutableMapping
from typing import Any

from anyio import to_thread
from sqlalchemy.orm import Session, sessionmaker
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from cloudlet import pki
from cloudlet.controller.services import certificates
from cloudlet.errors import AuthError
from cloudlet.settings import ControllerSettings

PEER = "cloudlet.peer"


class PeerCertProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with the client certificate in the scope."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._tls: dict[str, Any] | None = None
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            der = ssl_object.getpeercert(binary_form=True)
            self._tls = {PEER: pki.peer_cert(der) if der else None}

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._tls is not None:
            self.scope["extensions"] = {"tls": self._tls}  # type: ignore[typeddict-unknown-key]


def peer_of(scope: MutableMapping[str, Any]) -> pki.PeerCert | None:
    return scope.get("extensions", {}).get("tls", {}).get(PEER)


class RevokedSerials:
    """The revoked serials, read from the database at most every ``refresh_s`` (other
    replicas' revocations arrive within it; this one's at once, by :meth:`invalidate`)."""

    def __init__(self, sessions: sessionmaker[Session], refresh_s: float) -> None:
        self._sessions = sessions
        self._refresh_s = refresh_s
        self._serials: frozenset[str] = frozenset()
        self._read_at = -math.inf
        self._lock: asyncio.Lock | None = None

    def invalidate(self) -> None:
        self._read_at = -math.inf

    def _read(self) -> frozenset[str]:
        with self._sessions() as session:
            return certificates.revoked_serials(session)

    async def contains(self, serial: str) -> bool:
        if time.monotonic() - self._read_at > self._refresh_s:
            if self._lock is None:
                self._lock = asyncio.Lock()
            async with self._lock:
                if time.monotonic() - self._read_at > self._refresh_s:
                    started = time.monotonic()
                    self._serials = await to_thread.run_sync(self._read)
                    self._read_at = started
        return serial in self._serials


async def check_peer(
    scope: MutableMapping[str, Any], site_id: str, revoked: RevokedSerials
) -> None:
    """Refuse an agent request unless it came with this site's own client certificate,
    unexpired and not revoked.

    Raises:
        AuthError: no certificate, another site's, expired or revoked.
    """
    peer = peer_of(scope)
    if peer is None:
        raise AuthError("the agent endpoints need the site's client certificate (mutual TLS)")
    if peer.site_id != site_id:
        raise AuthError("the client certificate belongs to another site than the credential")
    if peer.not_after <= time.time():
        raise AuthError("the site's client certificate has expired; re-join with a new token")
    if await revoked.contains(peer.serial):
        raise AuthError("the site's client certificate is revoked")


def server_names(settings: ControllerSettings) -> list[str]:
    """The names the controller's server certificate carries."""
    names = ["localhost", "127.0.0.1", "::1", socket.gethostname()]
    if settings.host not in ("0.0.0.0", "::", ""):
        names.append(settings.host)
    return list(dict.fromkeys([*names, *settings.tls.names]))


def uvicorn_tls(settings: ControllerSettings, ca: pki.CertificateAuthority) -> dict[str, Any]:
    """uvicorn options serving HTTPS with a server certificate issued now (at every
    start, so that a change of names or a renewal is a restart), asking clients for a
    certificate of the CA without requiring one."""
    key, cert = ca.server_identity(server_names(settings), settings.tls.server_cert_validity_s)
    key_file = settings.data_dir / "server.key"
    cert_file = settings.data_dir / "server.crt"
    ca_file = settings.data_dir / "server-ca.crt"
    pki.write_private(key_file, key)
    cert_file.write_bytes(cert)
    ca_file.write_bytes(pki.cert_pem(ca.cert))
    return {
        "ssl_keyfile": str(key_file),
        "ssl_certfile": str(cert_file),
        "ssl_ca_certs": str(ca_file),
        "ssl_cert_reqs": ssl.CERT_OPTIONAL,
        "http": PeerCertProtocol,
    }
