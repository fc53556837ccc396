"""The site's TLS identity: its keys and certificates in ``data_dir/tls`` (mode 0600),
the CA it pins, and the SSL contexts built from them.

At join the agent learns the CA from ``ca_file``, or fetches ``GET /v1/ca`` and keeps
it only if its SHA-256 fingerprint is the ``ca_fingerprint`` it was given; from then
on it trusts that CA alone. It makes two ECDSA P-256 keys (the site's client identity
and its site-local API's) and sends their CSRs; the private keys never leave this
directory. The contexts are built once and updated in place when certificates are
renewed, so that every client holding them uses the new certificate on its next
connection.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from cloudlet import pki
from cloudlet.agent._wait import Backoff, sleep_or
from cloudlet.errors import AuthError, ConfigError, ControllerUnreachableError, SyncError
from cloudlet.schemas.sync import CertificateRenewal, SiteCertificates

if TYPE_CHECKING:
    from cloudlet.agent.client import ControllerClient

log = logging.getLogger(__name__)

TLS_DIR = "tls"
#: Longest sleep between two looks at the certificate's age.
_RECHECK_S = 60.0
CA, SITE_KEY, SITE_CERT, LOCAL_KEY, LOCAL_CERT = (
    "ca.crt", "site.key", "site.crt", "local.key", "local.crt",
)  # fmt: skip


class SiteTls:
    """One site's TLS files and contexts."""

    def __init__(self, data_dir: Path) -> None:
        self.dir = data_dir / TLS_DIR
        self._client: ssl.SSLContext | None = None
        self._server: ssl.SSLContext | None = None
        self._pending: tuple[pki.PrivateKey, pki.PrivateKey] | None = None

    def _path(self, name: str) -> Path:
        return self.dir / name

    # -- the CA -------------------------------------------------------------------------

    @property
    def has_ca(self) -> bool:
        return self._path(CA).exists()

    async def learn_ca(self, url: str, ca_file: Path | None, ca_fingerprint: str | None) -> None:
        """Make sure the CA to pin is known: already stored, the file given, or the
        controller's if its fingerprint is the one given.

        Raises:
            ConfigError: none of them, an unreadable file, or a fingerprint mismatch.
            ControllerUnreachableError: the controller could not be asked.
        """
        if self.has_ca:
            return
        if ca_file is not None:
            try:
                pem = ca_file.read_bytes()
            except OSError as exc:
                raise ConfigError(f"cannot read ca_file: {exc}") from exc
            try:
                pki.load_cert(pem)
            except Exception as exc:
                raise ConfigError(f"ca_file {ca_file}: {exc}") from exc
        elif ca_fingerprint:
            pem = await _fetch_ca(url, ca_fingerprint)
        else:
            raise ConfigError(
                "to join over TLS the agent needs the controller's CA: give --ca-file or "
                "--ca-fingerprint (or --insecure for plain HTTP in development)"
            )
        pki.write_private(self._path(CA), pem)
        if self._client is not None:
            self._client.load_verify_locations(self._path(CA))

    # -- certificates -------------------------------------------------------------------

    def requests(self, site_hint: str, local_names: list[str]) -> tuple[str, str]:
        """New keys (kept until :meth:`install`) and their CSRs: the client one and the
        site-local API's (SANs ``local_names``)."""
        site_key, local_key = pki.new_key(), pki.new_key()
        self._pending = (site_key, local_key)
        return (
            pki.make_csr(site_key, site_hint).decode(),
            pki.make_csr(local_key, local_names[0], local_names).decode(),
        )

    def install(self, issued: SiteCertificates) -> None:
        """Store what the controller issued for the pending keys, and use it from now on."""
        if self._pending is None:
            raise ConfigError("certificates arrived for no pending request")
        site_key, local_key = self._pending
        pki.write_private(self._path(SITE_KEY), pki.key_pem(site_key))
        pki.write_private(self._path(SITE_CERT), issued.certificate.encode())
        if issued.local_certificate is not None:
            pki.write_private(self._path(LOCAL_KEY), pki.key_pem(local_key))
            pki.write_private(self._path(LOCAL_CERT), issued.local_certificate.encode())
        self._pending = None
        self._reload()
        # Last: whoever finds the CA stored finds the site-local API serving its cert.
        pki.write_private(self._path(CA), issued.ca_certificate.encode())
        if self._client is not None:
            self._client.load_verify_locations(self._path(CA))

    def _validity(self) -> tuple[dt.datetime, dt.datetime] | None:
        try:
            cert = pki.load_cert(self._path(SITE_CERT).read_bytes())
        except Exception:
            return None
        return cert.not_valid_before_utc, cert.not_valid_after_utc

    def valid(self) -> bool:
        """Whether the site holds a client certificate that has not expired."""
        validity = self._validity()
        return validity is not None and dt.datetime.now(dt.UTC) < validity[1]

    def renew_in(self, fraction: float) -> float | None:
        """Seconds until renewal is due (``fraction`` of the certificate's life; 0: now),
        or None without a certificate."""
        validity = self._validity()
        if validity is None:
            return None
        start, end = validity
        if end - start > pki.BACKDATE:  # the life counts from the issue, not the backdate
            start += pki.BACKDATE
        due = start + (end - start) * fraction
        return max(0.0, (due - dt.datetime.now(dt.UTC)).total_seconds())

    # -- contexts -----------------------------------------------------------------------

    def client_context(self) -> ssl.SSLContext:
        """Trusting the pinned CA only, presenting the site certificate once there is one."""
        if self._client is None:
            # No trust anchor until the CA is known (none of the system's, ever).
            self._client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            self._client.minimum_version = ssl.TLSVersion.TLSv1_2
            if self.has_ca:
                self._client.load_verify_locations(self._path(CA))
            self._reload()
        return self._client

    def server_context(self) -> ssl.SSLContext:
        """The site-local API's: its certificate, or until join a throwaway self-signed
        one (nothing is served before join that a client could want verified)."""
        if self._server is None:
            self._server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            if not self._path(LOCAL_CERT).exists():
                own = pki.CertificateAuthority.generate("cloudlet site (not joined)", 30)
                pki.write_private(self._path("unjoined.key"), pki.key_pem(own.key))
                pki.write_private(self._path("unjoined.crt"), pki.cert_pem(own.cert))
                self._server.load_cert_chain(self._path("unjoined.crt"), self._path("unjoined.key"))
            self._reload()
        return self._server

    def _reload(self) -> None:
        # An expired certificate is not presented: the controller would refuse the
        # handshake, and a re-join (which needs none) could not get through.
        if self._client is not None and self.valid():
            self._client.load_cert_chain(self._path(SITE_CERT), self._path(SITE_KEY))
        if self._server is not None and self._path(LOCAL_CERT).exists():
            self._server.load_cert_chain(self._path(LOCAL_CERT), self._path(LOCAL_KEY))


async def _fetch_ca(url: str, expected: str) -> bytes:
    """The controller's CA certificate, fetched without verification and trusted only
    because its fingerprint is the one the operator gave."""
    try:
        # verify=False: nothing is trusted yet; the fingerprint below is the check.
        async with httpx.AsyncClient(verify=False, timeout=10.0) as http:
            answer = await http.get(f"{url.rstrip('/')}/v1/ca")
        pem = answer.json()["certificate"].encode()
        cert = pki.load_cert(pem)
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        raise ControllerUnreachableError(f"cannot fetch the CA from {url}: {exc}") from exc
    except Exception as exc:
        raise ControllerUnreachableError(f"the controller's CA is unusable: {exc}") from exc
    if not pki.same_fingerprint(cert, expected):
        raise ConfigError(
            f"the controller's CA has fingerprint {pki.fingerprint(cert)}, not the "
            f"{expected} given: not joining"
        )
    return pem


@dataclass
class TlsJoin:
    """What enrollment needs for TLS: the identity to fill and how to trust the CA."""

    tls: SiteTls
    ca_file: Path | None
    ca_fingerprint: str | None
    #: The names the site-local API's certificate carries (first: its common name).
    local_names: list[str]


async def renew_loop(
    join: TlsJoin,
    client: ControllerClient,
    fraction: float,
    stop: asyncio.Event,
    *,
    backoff_max_s: float = 30.0,
) -> None:
    """Renew the site's certificates once ``fraction`` of their life has passed. A
    refusal (the certificate expired while the site was cut off, or was revoked) is
    logged: such a site must re-join with a new token."""
    backoff = Backoff(backoff_max_s)
    while not stop.is_set():
        wait = join.tls.renew_in(fraction)
        if wait == 0:
            csr, local_csr = join.tls.requests("site", join.local_names)
            try:
                issued = await client.renew(CertificateRenewal(csr=csr, local_csr=local_csr))
            except AuthError as exc:
                log.warning("certificate renewal refused (%s); re-join with a new token", exc)
                wait = _RECHECK_S
            except SyncError as exc:  # unreachable included: try again soon
                log.info("certificate renewal failed (%s); retrying", exc)
                wait = backoff.next()
            else:
                join.tls.install(issued)
                client.reconnect()
                backoff.reset()
                log.info("renewed the site certificate, valid until %s", issued.not_after)
                continue
        await sleep_or(stop, _RECHECK_S if wait is None else min(wait, _RECHECK_S))
