"""Site certificates at the controller: issued and recorded, revoked by a re-join or a
decommission, and the per-request check of the client certificate a connection carries."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from controller_fakes import enrolled_site, sessions

from cloudlet import pki
from cloudlet.controller.peer import PEER, RevokedSerials, check_peer
from cloudlet.controller.services import certificates, decommission
from cloudlet.errors import AuthError, InvalidInputError

CA = pki.CertificateAuthority.generate()


def _csr(*names: str) -> str:
    return pki.make_csr(pki.new_key(), "x", names).decode()


def _scope(peer: pki.PeerCert | None) -> dict[str, object]:
    return {"extensions": {"tls": {PEER: peer}}}


def test_issue_records_both_and_revoke_takes_only_the_live(tmp_path: Path) -> None:
    maker = sessions(tmp_path)
    with maker.begin() as session:
        site = enrolled_site(session)
        issued = certificates.issue(session, CA, site, _csr(), _csr("127.0.0.1"), 600)
        assert issued.local_certificate is not None
        assert issued.ca_certificate == CA.pem
        cert = pki.load_cert(issued.certificate.encode())
        assert cert.subject.rfc4514_string() == f"CN={site.id}"
        assert certificates.revoked_serials(session) == frozenset()
        assert certificates.revoke_site(session, site.id) == 2
        serial = format(cert.serial_number, "x")
        assert serial in certificates.revoked_serials(session)
        assert certificates.revoke_site(session, site.id) == 0  # already revoked


def test_a_bad_csr_is_invalid_input(tmp_path: Path) -> None:
    maker = sessions(tmp_path)
    with maker.begin() as session:
        site = enrolled_site(session)
        with pytest.raises(InvalidInputError):
            certificates.issue(session, CA, site, "nope", None, 600)
        with pytest.raises(InvalidInputError):  # a local API certificate naming nothing
            certificates.issue(session, CA, site, _csr(), _csr(), 600)


def test_decommission_revokes(tmp_path: Path) -> None:
    maker = sessions(tmp_path)
    with maker.begin() as session:
        site = enrolled_site(session)
        certificates.issue(session, CA, site, _csr(), None, 600)
        decommission.decommission(session, site, force=True)
        assert len(certificates.revoked_serials(session)) == 1


def test_check_peer(tmp_path: Path) -> None:
    maker = sessions(tmp_path)
    with maker.begin() as session:
        site = enrolled_site(session)
        issued = certificates.issue(session, CA, site, _csr(), None, 600)
        site_id = site.id
    serial = format(pki.load_cert(issued.certificate.encode()).serial_number, "x")
    revoked = RevokedSerials(maker, refresh_s=3600)
    later = time.time() + 600

    async def check(peer: pki.PeerCert | None) -> str | None:
        try:
            await check_peer(_scope(peer), site_id, revoked)
        except AuthError as exc:
            return str(exc)
        return None

    assert asyncio.run(check(pki.PeerCert(site_id, serial, later))) is None
    assert "client certificate" in (asyncio.run(check(None)) or "")
    assert "another site" in (asyncio.run(check(pki.PeerCert("other", serial, later))) or "")
    assert "expired" in (asyncio.run(check(pki.PeerCert(site_id, serial, time.time() - 1))) or "")
    with maker.begin() as session:
        certificates.revoke_site(session, site_id)
    # Read at most every refresh_s: this replica's own revocation invalidates at once.
    assert asyncio.run(check(pki.PeerCert(site_id, serial, later))) is None
    revoked.invalidate()
    assert "revoked" in (asyncio.run(check(pki.PeerCert(site_id, serial, later))) or "")
