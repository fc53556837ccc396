"""/v1/ca: the fleet's CA certificate (no token: what a client verifies a site against);
/v1/agent/certificate: a site renewing its certificates before they expire."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import Field
from starlette.concurrency import run_in_threadpool

from cloudlet.controller.api import agent as agent_api
from cloudlet.controller.db.models import Site
from cloudlet.controller.services import certificates
from cloudlet.controller.state import ControllerState
from cloudlet.schemas._base import Model
from cloudlet.schemas.sync import CertificateRenewal, SiteCertificates

RENEW_PATH = "/v1/agent/certificate"

router = APIRouter(tags=["tls"])


class CaCertificate(Model):
    certificate: str = Field(description="PEM: the CA every certificate of the fleet chains to.")
    fingerprint: str = Field(description="SHA-256 of its DER, hex (what --ca-fingerprint takes).")


@router.get("/v1/ca", response_model=CaCertificate)
def ca_certificate(request: Request) -> CaCertificate:
    """The CA certificate: agents check its fingerprint at join, clients verify sites'
    local APIs and the controller against it."""
    ca = request.app.state.cloudlet.ca
    return CaCertificate(certificate=ca.pem, fingerprint=ca.fingerprint)


@router.post(RENEW_PATH, response_model=SiteCertificates, tags=["agent"])
async def renew(body: CertificateRenewal, request: Request) -> SiteCertificates:
    """New certificates for the calling site (its current client certificate, unexpired,
    and its credential authenticate it); the old ones run out by themselves."""
    st: ControllerState = request.app.state.cloudlet
    site = await agent_api.authenticate_request(request, st)
    return await run_in_threadpool(_issue, st, site.id, body)


def _issue(st: ControllerState, site_id: str, body: CertificateRenewal) -> SiteCertificates:
    with st.sessions.begin() as session:
        site = session.get_one(Site, site_id)
        return certificates.issue(
            session, st.ca, site, body.csr, body.local_csr, st.settings.tls.site_cert_validity_s
        )
