"""The controller <-> agent protocol: enrollment, desired state, reports.

Desired state flows down by cursor: ``GET /v1/agent/desired?since=REV&wait=S``
answers a delta (every instance changed after REV, deletions included) or a
full snapshot when REV is unknown to the controller (too old, or ahead after a
restore). Actual state and events flow up in ``POST /v1/agent/report``; events
carry a per-site sequence number and are stored once per (site, seq); the answer
acknowledges the highest sequence stored so the agent can drop it.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated

import orjson
from pydantic import AfterValidator, Field

from cloudlet.schemas._base import Input, Model
from cloudlet.schemas.apps import Component
from cloudlet.schemas.artifacts import CachedImage
from cloudlet.schemas.client_tokens import ClientKey
from cloudlet.schemas.common import Float, Integer, Name, Project, Ref, Resources, Utilization
from cloudlet.schemas.events import EventKind
from cloudlet.schemas.instances import ActualState, DesiredState, InstanceOrigin
from cloudlet.schemas.mobility import CheckpointRestore, HandoffOrder
from cloudlet.schemas.signing import InstanceSigning

#: A PEM certificate signing request (an ECDSA P-256 or Ed25519 key's): far below this.
_CSR_MAX = 8192


class EnrollRequest(Input):
    join_token: str = Field(min_length=8, max_length=200)
    agent_version: str = Field("unknown", max_length=64)
    capacity: Resources | None = None
    csr: str | None = Field(
        None,
        max_length=_CSR_MAX,
        description="PEM CSR for the site's client certificate (required unless the "
        "controller runs --insecure).",
    )
    local_csr: str | None = Field(
        None,
        max_length=_CSR_MAX,
        description="PEM CSR for the site-local API's server certificate; its SANs are "
        "the addresses the certificate names.",
    )


class SiteCertificates(Model):
    """What the CA issued to a site: its client certificate, its site-local API's, and
    the CA certificate to pin."""

    certificate: str = Field(description="PEM: the site's client certificate.")
    local_certificate: str | None = Field(None, description="PEM: the site-local API's.")
    ca_certificate: str = Field(description="PEM: the controller's CA.")
    not_after: datetime = Field(description="When the client certificate expires.")


class EnrollResponse(Model):
    site_id: str
    site_name: str
    credential: str = Field(description="The site's bearer secret; shown once.")
    revision: int
    certificates: SiteCertificates | None = Field(
        None, description="Issued for the CSRs sent (none without a CSR)."
    )


class CertificateRenewal(Input):
    """A site asking for new certificates before its current ones expire."""

    csr: str = Field(max_length=_CSR_MAX, description="PEM CSR for the new client certificate.")
    local_csr: str | None = Field(None, max_length=_CSR_MAX, description="PEM CSR, local API.")


class DesiredInstance(Model):
    """One instance as the controller wants it, with all the agent needs to run it."""

    id: str
    name: str
    app: str
    project: str
    desired_state: DesiredState
    components: list[Component]
    resources: Resources
    revision: int = Field(description="Site revision at which this entry last changed.")
    restarts: int = Field(
        0, ge=0, description="Bumped by each restart asked for; the site restarts once per bump."
    )
    epoch: int = Field(0, ge=0, description="The instance's move count: run it only at this one.")
    handoff: HandoffOrder | None = Field(None, description="A move in progress, if any.")
    relocatable: bool = Field(False, description="The controller may restart it elsewhere.")
    app_version: int = Field(1, ge=1, description="The app version these components are.")
    checkpoint_interval_s: float | None = Field(
        None, description="Take a checkpoint of it this often and send it to the controller."
    )
    restore: CheckpointRestore | None = Field(
        None, description="A failover: start it from this checkpoint (once, at this epoch)."
    )
    signing: InstanceSigning | None = Field(
        None,
        description="The signatures of its VM components' image and overlay, the keys that "
        "may have made them and its project's policy; None: nothing to check.",
    )


class AgentTarget(Model):
    """The agent version a site should run (set by an agent upgrade or its rollback)."""

    version: str = Field(max_length=64)
    digest: str | None = Field(
        None,
        description="Blake3 of the wheel at GET /v1/agent-packages/{version}/blob; None "
        "when the controller holds no package of it (the site must already hold an "
        "install of it: its base one, or an earlier upgrade's).",
    )
    size: int | None = Field(None, ge=0)


class DesiredStateDoc(Model):
    """The answer to a desired-state pull."""

    site: str
    revision: int = Field(description="The site's revision this answer brings the agent to.")
    full: bool = Field(description="True: a snapshot replacing everything the agent holds.")
    since: int = Field(description="The cursor this delta starts from (ignored when full).")
    instances: list[DesiredInstance] = Field(
        description="Full: every live instance. Delta: every entry changed after `since`; "
        "deleted ones carry desired_state=deleted."
    )
    images: list[str] = Field(
        default_factory=list,
        description="Digests of the base images the site should hold (always the full list).",
    )
    agent: AgentTarget | None = Field(
        None, description="The agent version to run (always complete); None: keep the current."
    )
    client_keys: list[ClientKey] | None = Field(
        None,
        description="The public keys client tokens are signed with (always the full set); "
        "None: a controller that does not say, keep the ones held.",
    )
    client_revoked: list[str] | None = Field(
        None,
        description="The ids (jti) of client tokens revoked before their expiry (always "
        "the full list of those not yet expired); None: a controller that does not say.",
    )


#: Largest ``data`` of one event, serialised: events are records, not payloads.
MAX_EVENT_DATA_BYTES = 16 * 1024
#: Longest free-text reason kept; longer ones are cut (a report is never refused for one).
MAX_REASON_CHARS = 2000


def _bounded_data(data: dict[str, object]) -> dict[str, object]:
    try:
        size = len(orjson.dumps(data))
    except TypeError:  # an integer past 64 bits, say: orjson refuses, json does not
        size = len(json.dumps(data))
    if size > MAX_EVENT_DATA_BYTES:
        raise ValueError(f"event data is larger than {MAX_EVENT_DATA_BYTES} bytes")
    return data


def _cut_reason(reason: str | None) -> str | None:
    if reason is None or len(reason) <= MAX_REASON_CHARS:
        return reason
    return reason[: MAX_REASON_CHARS - 1] + "…"


class OutboxEvent(Input):
    seq: Integer = Field(gt=0, le=2**53)
    kind: EventKind
    instance: Ref | None = None
    at: datetime
    data: Annotated[dict[str, object], AfterValidator(_bounded_data)] = Field(default_factory=dict)


class ActualInstance(Input):
    id: Ref
    name: Annotated[str, Field(min_length=1, max_length=100)]
    app: Name
    project: Project
    origin: InstanceOrigin = InstanceOrigin.CONTROLLER
    state: ActualState
    endpoint: str | None = Field(None, max_length=255)
    reason: Annotated[str | None, AfterValidator(_cut_reason)] = None
    timings: dict[Annotated[str, Field(max_length=32)], Float] = Field(
        default_factory=dict, max_length=32
    )
    usage_since: datetime | None = Field(
        None, description="Start of the usage interval not yet recorded (while running)."
    )
    updated_at: datetime
    epoch: int = Field(0, ge=0, description="The epoch the site runs this instance at.")
    applied_revision: Integer | None = Field(
        None,
        ge=0,
        le=2**53,
        description="The desired revision the site last brought this instance to: a "
        "change is in effect once this reaches the revision it was made at.",
    )
    crash_restarts: Integer | None = Field(
        None,
        ge=0,
        le=2**31 - 1,
        description="Times the site restarted the workloads after they exited on their own, "
        "since they were last started; omitted when none, so that a report from a healthy "
        "site reads as it did before the field existed.",
    )


class AgentReport(Input):
    """A heartbeat: the agent's view of itself, its instances and pending events."""

    agent_version: str = Field("unknown", max_length=64)
    applied_revision: Integer = Field(ge=0)
    capacity: Resources | None = None
    utilization: Utilization | None = None
    instances: list[ActualInstance] | None = Field(
        None,
        max_length=10_000,
        description="The full actual state; omitted when unchanged since the last ack.",
    )
    events: list[OutboxEvent] = Field(default_factory=list, max_length=1000)
    cache: list[CachedImage] | None = Field(
        None, max_length=10_000, description="The site's artifact cache; omitted when unchanged."
    )
    local_api: str | None = Field(
        None, max_length=255, description="The site-local API's URL, for clients to call."
    )


class RejectedEvent(Model):
    """An event the controller refused to store: the agent logs it and drops it."""

    seq: int
    reason: str


class ReportAck(Model):
    acked_seq: int = Field(description="Every event with seq <= this is stored; drop them.")
    rejected: list[RejectedEvent] = Field(
        default_factory=list,
        description="Events refused (about another site's instance, or a sequence jump "
        "past the bound): never stored; drop them too.",
    )
    revision: int = Field(description="The site's current desired revision (a hint to pull).")
    server_time: datetime
