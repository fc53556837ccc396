"""Certificates the CA issues to sites: signing their CSRs at join and renewal, recording
the serials, and revoking them (a re-join, a decommission)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from cloudlet import pki
from cloudlet.controller.db.models import Site, SiteCertificate
from cloudlet.controller.services._util import utcnow
from cloudlet.schemas.sync import SiteCertificates

SITE, LOCAL = "site", "local"


def issue(
    session: Session,
    ca: pki.CertificateAuthority,
    site: Site,
    csr: str,
    local_csr: str | None,
    validity_s: float,
) -> SiteCertificates:
    """Sign a site's client CSR (and its site-local API's, if given) and record both.

    Raises:
        InvalidInputError: a CSR is malformed, its signature does not check, its key is
            of another kind, or the local one names nothing.
    """
    request = pki.load_csr(csr)
    local_request = pki.load_csr(local_csr) if local_csr is not None else None
    issued = ca.issue_site(request, site.id, site.name, validity_s)
    _record(session, site.id, issued, SITE)
    local_pem = None
    if local_request is not None:
        names = pki.csr_names(local_request)
        local = ca.issue_server(local_request.public_key(), names, validity_s)
        _record(session, site.id, local, LOCAL)
        local_pem = local.pem
    return SiteCertificates(
        certificate=issued.pem,
        local_certificate=local_pem,
        ca_certificate=ca.pem,
        not_after=issued.not_after,
    )


def _record(session: Session, site_id: str, issued: pki.Issued, kind: str) -> None:
    session.add(
        SiteCertificate(
            serial=issued.serial,
            site_id=site_id,
            kind=kind,
            not_after=issued.not_after,
            created_at=utcnow(),
            revoked_at=None,
        )
    )


def revoke_site(session: Session, site_id: str) -> int:
    """Revoke every certificate of the site that has not expired; returns how many."""
    now = utcnow()
    return session.execute(
        update(SiteCertificate)
        .where(
            SiteCertificate.site_id == site_id,
            SiteCertificate.revoked_at.is_(None),
            SiteCertificate.not_after > now,
        )
        .values(revoked_at=now)
    ).rowcount


def revoked_serials(session: Session, now: datetime | None = None) -> frozenset[str]:
    """The serials revoked before they expired (an expired one fails the handshake)."""
    rows = session.scalars(
        select(SiteCertificate.serial).where(
            SiteCertificate.revoked_at.is_not(None), SiteCertificate.not_after > (now or utcnow())
        )
    )
    return frozenset(rows)
