"""SQLAlchemy tables of the controller. Every tenant-owned row carries a project."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        from datetime import UTC

        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: UTCDateTime}


class Project(Base):
    __tablename__ = "projects"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    created_at: Mapped[datetime]


class ApiToken(Base):
    """A bearer token for people and tools (the admin token to begin with)."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(63))
    project: Mapped[str] = mapped_column(ForeignKey("projects.name"))
    role: Mapped[str] = mapped_column(String(32))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime]
    #: "key" (an API key, or the bootstrap admin token) or "login" (a user's sign-in).
    kind: Mapped[str] = mapped_column(String(16), default="key", server_default="key")
    #: The user who signed in (login tokens) or made the key (None: bootstrap, CLI).
    user_id: Mapped[str | None] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE", name="fk_api_tokens_user_id_users"), index=True
    )
    #: After this the token is refused (None: until revoked).
    expires_at: Mapped[datetime | None]


class User(Base):
    """A person who signs in with a password (stored as an argon2id hash only)."""

    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime]


class RoleAssignment(Base):
    """A user's role in one project; a user may hold one role in each of many."""

    __tablename__ = "role_assignments"

    user_id: Mapped[str] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    project: Mapped[str] = mapped_column(ForeignKey("projects.name"), primary_key=True, index=True)
    role: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime]


class Site(Base):
    __tablename__ = "sites"
    __table_args__ = (
        # Sites behind their desired state (few, in steady state): sync lag. No index
        # may name last_seen or the gauges: the heartbeat must stay a HOT update.
        Index(
            "ix_sites_behind",
            "revision_changed_at",
            sqlite_where=text("applied_revision < revision"),
            postgresql_where=text("applied_revision < revision"),
        ),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    region: Mapped[str] = mapped_column(String(63))
    latitude: Mapped[float | None] = mapped_column(Float)
    longitude: Mapped[float | None] = mapped_column(Float)
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    state: Mapped[str] = mapped_column(String(20))
    credential_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    # Desired state versioning: revision bumps on every change to this site's
    # desired state; deltas older than tombstone_floor need a full snapshot.
    revision: Mapped[int] = mapped_column(BigInteger, default=0)
    revision_changed_at: Mapped[datetime] = mapped_column(index=True)
    tombstone_floor: Mapped[int] = mapped_column(BigInteger, default=0)
    applied_revision: Mapped[int] = mapped_column(BigInteger, default=0)
    acked_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    last_seen: Mapped[datetime | None]
    availability: Mapped[str] = mapped_column(String(16), default="unknown")
    bytes_in: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_out: Mapped[int] = mapped_column(BigInteger, default=0)
    capacity: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    utilization: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    agent_version: Mapped[str | None] = mapped_column(String(64))
    #: Set by decommission: once drained, the site is decommissioned. A drain for
    #: maintenance leaves it unset, and the site stays, empty, until it is reopened.
    decommission_requested_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    #: Last-mile RTT clients see to the site (operator-set; None: the default model).
    access_latency_ms: Mapped[float | None] = mapped_column(Float)
    #: The site-local API's URL, as the agent reports it.
    local_api_url: Mapped[str | None] = mapped_column(String(255))
    #: When ``availability`` last flipped (the site.offline clear waits for a hold).
    availability_changed_at: Mapped[datetime | None]
    #: The agent version the site should run (None: whichever it runs); part of its
    #: desired state, set by an agent upgrade.
    agent_target: Mapped[str | None] = mapped_column(String(64))


class JoinToken(Base):
    __tablename__ = "join_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"), index=True)
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]
    created_at: Mapped[datetime]


class App(Base):
    __tablename__ = "apps"
    __table_args__ = (UniqueConstraint("project", "name"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    project: Mapped[str] = mapped_column(ForeignKey("projects.name"))
    name: Mapped[str] = mapped_column(String(63))
    description: Mapped[str] = mapped_column(Text, default="")
    components: Mapped[list[Any]]
    resources: Mapped[dict[str, Any]]
    latency_bound_ms: Mapped[int | None] = mapped_column(Integer)
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    constraints: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[datetime]
    relocatable: Mapped[bool] = mapped_column(default=False, server_default=false())
    failover_after_s: Mapped[float | None] = mapped_column(Float)
    checkpoint_interval_s: Mapped[float | None] = mapped_column(Float)
    #: The latest published version: new instances run it; ``components`` and
    #: ``resources`` above are its definition (older ones live in app_versions).
    version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")


class AppVersion(Base):
    """One published definition of an app; instances run one version each."""

    __tablename__ = "app_versions"

    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    components: Mapped[list[Any]]
    resources: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]


class Instance(Base):
    __tablename__ = "instances"
    __table_args__ = (
        UniqueConstraint("project", "name"),
        Index("ix_instances_site_revision", "site_id", "revision"),
        # The list order (GET /v1/instances pages by this key).
        Index("ix_instances_list_order", "created_at", "name", "id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    project: Mapped[str] = mapped_column(ForeignKey("projects.name"))
    name: Mapped[str] = mapped_column(String(63))
    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id"), index=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"))
    origin: Mapped[str] = mapped_column(String(16))
    desired_state: Mapped[str] = mapped_column(String(16))
    revision: Mapped[int] = mapped_column(BigInteger)
    actual_state: Mapped[str] = mapped_column(String(16))
    endpoint: Mapped[str | None] = mapped_column(String(255))
    reason: Mapped[str | None] = mapped_column(Text)
    timings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    actual_updated_at: Mapped[datetime | None]
    #: Restarts asked for; the agent restarts the workloads once per bump.
    restarts: Mapped[int] = mapped_column(Integer, default=0)
    #: Start of the usage interval the site has not recorded yet (reported).
    usage_since: Mapped[datetime | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    #: Moves so far; agents run the instance only at this epoch.
    epoch: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    client_latitude: Mapped[float | None] = mapped_column(Float)
    client_longitude: Mapped[float | None] = mapped_column(Float)
    #: Move the instance when its client's position leaves the latency bound.
    follow_client: Mapped[bool] = mapped_column(default=False, server_default=false())
    #: The placement explanation of its current site (ranked and rejected sites).
    placement: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    moved_at: Mapped[datetime | None]
    #: Times the site restarted the workloads after they exited on their own (reported).
    crash_restarts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: The app version this instance runs (a rollout moves it, wave by wave).
    app_version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    #: The site revision its site last brought it to (reported): a change is in
    #: effect for the instance once this reaches the revision it was made at.
    applied_revision: Mapped[int | None] = mapped_column(BigInteger)


class InstanceDeparture(Base):
    """An instance moved away from a site: that site's desired state says so (deleted
    at the new epoch) until its agent applied it."""

    __tablename__ = "instance_departures"

    instance_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    site_id: Mapped[str] = mapped_column(
        ForeignKey("sites.id", ondelete="CASCADE"), primary_key=True
    )
    epoch: Mapped[int] = mapped_column(BigInteger)
    revision: Mapped[int] = mapped_column(BigInteger, index=True)
    created_at: Mapped[datetime]


class Handoff(Base):
    """One move of an instance between two sites, phase by phase."""

    __tablename__ = "handoffs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    instance_id: Mapped[str] = mapped_column(String(36), index=True)
    project: Mapped[str] = mapped_column(String(63))
    source_site_id: Mapped[str] = mapped_column(String(36), index=True)
    dest_site_id: Mapped[str] = mapped_column(String(36), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    phase: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    epoch: Mapped[int] = mapped_column(BigInteger)
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    phases: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    #: vm: the one-time token the source shows the destination, where it listens, the
    #: destination's revision at which its incoming entry last changed, and the relay
    #: (of the replica that opened the handoff) both sites meet at if need be.
    token: Mapped[str | None] = mapped_column(String(64))
    address: Mapped[str | None] = mapped_column(String(255))
    dest_revision: Mapped[int | None] = mapped_column(BigInteger)
    relay: Mapped[str | None] = mapped_column(String(255))
    #: relocate: the checkpoint the destination starts from (None: the app's definition).
    checkpoint_id: Mapped[str | None] = mapped_column(String(36))


class Checkpoint(Base):
    """A checkpoint of an instance a site uploaded; its bytes are a blob,
    ``checkpoints/<instance>/<id>``. Only the latest few per instance are kept."""

    __tablename__ = "checkpoints"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    instance_id: Mapped[str] = mapped_column(String(36), index=True)
    project: Mapped[str] = mapped_column(String(63))
    site_id: Mapped[str] = mapped_column(String(36))
    epoch: Mapped[int] = mapped_column(BigInteger)
    #: The app version the instance ran: a VM checkpoint fits only that version's base.
    app_version: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))
    digest: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    pause_s: Mapped[float | None] = mapped_column(Float)
    taken_at: Mapped[datetime]
    received_at: Mapped[datetime]


class Event(Base):
    """Site events keyed by (site, seq): storing one twice is a no-op."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_at", "at"),)

    site_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    project: Mapped[str | None] = mapped_column(String(63))
    instance_id: Mapped[str | None] = mapped_column(String(36), index=True)
    at: Mapped[datetime]
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    received_at: Mapped[datetime]


class ControllerEvent(Base):
    """What the controller itself observed (enrollments, offline verdicts)."""

    __tablename__ = "controller_events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    site_id: Mapped[str | None] = mapped_column(String(36), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    at: Mapped[datetime] = mapped_column(index=True)
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Alarm(Base):
    """One alarm's life: raised once, cleared once (``cleared_at`` None while active)."""

    __tablename__ = "alarms"
    __table_args__ = (
        Index(
            "ux_alarms_active",
            "alarm_id",
            "entity",
            unique=True,
            sqlite_where=text("cleared_at IS NULL"),
            postgresql_where=text("cleared_at IS NULL"),
        ),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    alarm_id: Mapped[str] = mapped_column(String(63))
    severity: Mapped[str] = mapped_column(String(16))
    entity: Mapped[str] = mapped_column(String(255))
    site_id: Mapped[str | None] = mapped_column(String(36), index=True)
    project: Mapped[str | None] = mapped_column(String(63))
    instance_id: Mapped[str | None] = mapped_column(String(36))
    reason: Mapped[str | None] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(16))
    raised_at: Mapped[datetime] = mapped_column(index=True)
    cleared_at: Mapped[datetime | None]


class AgentPackage(Base):
    """A wheel of the agent that sites can upgrade to; its bytes live in the blob store."""

    __tablename__ = "agent_packages"

    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    digest: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    filename: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime]


class Rollout(Base):
    """Moving many things to a new version in waves: an app's instances, or the
    agents of many sites. Stops at the first unhealthy wave and rolls it back."""

    __tablename__ = "rollouts"
    __table_args__ = (
        Index(
            "ux_rollouts_running",
            "kind",
            text("coalesce(app_id, '')"),
            unique=True,
            sqlite_where=text("state = 'running'"),
            postgresql_where=text("state = 'running'"),
        ),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    #: The app's id (kind app) or None (kind agent).
    app_id: Mapped[str | None] = mapped_column(String(36), index=True)
    project: Mapped[str] = mapped_column(String(63))
    #: App rollouts: the app's version before the publish, restored if it fails.
    from_version: Mapped[str | None] = mapped_column(String(64))
    to_version: Mapped[str] = mapped_column(String(64))
    strategy: Mapped[str] = mapped_column(String(16))
    max_parallel: Mapped[int] = mapped_column(Integer)
    canary: Mapped[int] = mapped_column(Integer)
    health_timeout_s: Mapped[float] = mapped_column(Float)
    state: Mapped[str] = mapped_column(String(16), index=True)
    #: The wave being updated (0-based); waves after it have not been touched.
    wave: Mapped[int] = mapped_column(Integer, default=0)
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]


class RolloutItem(Base):
    """One instance (app rollout) or site (agent upgrade) of a rollout."""

    __tablename__ = "rollout_items"

    rollout_id: Mapped[str] = mapped_column(
        ForeignKey("rollouts.id", ondelete="CASCADE"), primary_key=True
    )
    entity_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
    wave: Mapped[int] = mapped_column(Integer)
    site_id: Mapped[str] = mapped_column(String(36))
    from_version: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    #: The site revision the update was written at: health counts only after it.
    revision: Mapped[int | None] = mapped_column(BigInteger)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    reason: Mapped[str | None] = mapped_column(Text)


class Image(Base):
    """A base image, content-addressed: its digest (blake3 of its raw bytes) is its id."""

    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("project", "name"),)

    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    project: Mapped[str] = mapped_column(ForeignKey("projects.name"))
    name: Mapped[str] = mapped_column(String(63))
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime]


class Overlay(Base):
    """A VM overlay, identified by its manifest's root digest, on a registered base."""

    __tablename__ = "overlays"
    __table_args__ = (UniqueConstraint("project", "name"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    project: Mapped[str] = mapped_column(ForeignKey("projects.name"))
    name: Mapped[str] = mapped_column(String(63))
    base_digest: Mapped[str] = mapped_column(ForeignKey("images.digest"), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    disk_size: Mapped[int] = mapped_column(BigInteger)
    memory_size: Mapped[int | None] = mapped_column(BigInteger)
    #: The base VM's RAM the overlay's memory was made against (an image), if any.
    memory_base_digest: Mapped[str | None] = mapped_column(
        ForeignKey("images.digest", name="fk_overlays_memory_base_digest_images"), index=True
    )
    #: It carries device state: sites resume the VM instead of booting it.
    resumable: Mapped[bool] = mapped_column(default=False, server_default=false())
    created_at: Mapped[datetime]


class Upload(Base):
    """A resumable upload in progress; its bytes live in DATA_DIR/uploads/<id>."""

    __tablename__ = "uploads"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    project: Mapped[str] = mapped_column(ForeignKey("projects.name"))
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(63))
    size: Mapped[int] = mapped_column(BigInteger)
    digest: Mapped[str | None] = mapped_column(String(64))
    received: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class SiteImage(Base):
    """A base image a site should hold (pre-staged): part of its desired state."""

    __tablename__ = "site_images"

    site_id: Mapped[str] = mapped_column(
        ForeignKey("sites.id", ondelete="CASCADE"), primary_key=True
    )
    digest: Mapped[str] = mapped_column(ForeignKey("images.digest"), primary_key=True, index=True)
    requested_at: Mapped[datetime]


class SiteCache(Base):
    """What a site's agent last reported holding in its artifact cache."""

    __tablename__ = "site_caches"

    site_id: Mapped[str] = mapped_column(
        ForeignKey("sites.id", ondelete="CASCADE"), primary_key=True
    )
    entries: Mapped[list[Any]]
    reported_at: Mapped[datetime]


class ClientTokenKey(Base):
    """A public key client tokens may be signed with; every site is given them all.

    Only the public half is stored: each controller replica keeps its private key in its
    own data directory (or the operator's key file) and registers its public key here.
    """

    __tablename__ = "client_token_keys"

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    public_key: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    #: Set when an operator retires the key: sites drop it, and tokens it signed stop
    #: working at each site's next pull. The row stays, so that a replica still holding
    #: the key cannot bring it back by registering it at its next start.
    retired_at: Mapped[datetime | None]


class IssuedClientToken(Base):
    """A client token the controller signed: what it says, not the token itself. Kept
    so that a project can list its tokens and revoke one before it expires (a lost
    tablet); a revoked token's jti is carried to every site until its expiry."""

    __tablename__ = "client_tokens"
    __table_args__ = (
        Index(
            "ix_client_tokens_revoked",
            "expires_at",
            sqlite_where=text("revoked_at IS NOT NULL"),
            postgresql_where=text("revoked_at IS NOT NULL"),
        ),
    )

    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    project: Mapped[str] = mapped_column(ForeignKey("projects.name"), index=True)
    subject: Mapped[str] = mapped_column(String(200))
    apps: Mapped[list[Any]]
    kid: Mapped[str] = mapped_column(String(64))
    issued_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]


class PublisherKey(Base):
    """The public half of a publisher's key: it may sign its project's images and overlays
    (the private half never leaves the publisher). Revoked keys stay, so that their
    signatures read as revoked rather than unknown."""

    __tablename__ = "publisher_keys"
    __table_args__ = (UniqueConstraint("project", "name"),)

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    project: Mapped[str] = mapped_column(ForeignKey("projects.name"))
    name: Mapped[str] = mapped_column(String(63))
    public_key: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]


class ArtifactSignature(Base):
    """A publisher key's signature of an image's digest or an overlay's root digest,
    checked before it was stored (see cloudlet.signing)."""

    __tablename__ = "artifact_signatures"

    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    kid: Mapped[str] = mapped_column(ForeignKey("publisher_keys.kid"), primary_key=True, index=True)
    signature: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime]


class SigningPolicy(Base):
    """A project's signing policy; a project without a row requires no signatures."""

    __tablename__ = "signing_policies"

    project: Mapped[str] = mapped_column(ForeignKey("projects.name"), primary_key=True)
    require_signatures: Mapped[bool] = mapped_column(default=False)
    updated_at: Mapped[datetime]


class ProjectQuota(Base):
    """A project's limits, set by admins; a null column (or no row) is unlimited.
    What a project uses is counted from its rows at each check, not stored here."""

    __tablename__ = "project_quotas"

    project: Mapped[str] = mapped_column(
        ForeignKey("projects.name", ondelete="CASCADE"), primary_key=True
    )
    instances: Mapped[int | None] = mapped_column(Integer)
    vcpus: Mapped[float | None] = mapped_column(Float)
    memory_mib: Mapped[int | None] = mapped_column(BigInteger)
    overlay_bytes: Mapped[int | None] = mapped_column(BigInteger)
    image_bytes: Mapped[int | None] = mapped_column(BigInteger)
    updated_at: Mapped[datetime]


class UsageRecord(Base):
    """A site's usage record (one USAGE event), cut at whole UTC hours into pieces that
    share its (site, seq): stored once however often the site sends it again. The
    times are the site's: the interval it ran, when it wrote the record down; and ours:
    when the record arrived (``received_at``), which is what makes a record late."""

    __tablename__ = "usage_records"
    __table_args__ = (Index("ix_usage_records_project_start", "project", "start_at"),)

    site_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    piece: Mapped[int] = mapped_column(Integer, primary_key=True)
    project: Mapped[str] = mapped_column(String(63))
    app: Mapped[str] = mapped_column(String(63))
    instance_id: Mapped[str | None] = mapped_column(String(36))
    start_at: Mapped[datetime]
    end_at: Mapped[datetime]
    #: The piece's share of the record's running time, in milliseconds.
    ms: Mapped[int] = mapped_column(BigInteger)
    vcpus: Mapped[float] = mapped_column(Float)
    memory_mib: Mapped[int] = mapped_column(BigInteger)
    recorded_at: Mapped[datetime]
    received_at: Mapped[datetime]


class ArtifactFetch(Base):
    """Bytes of one image or overlay the controller sent to one site within a few
    seconds (counted in memory per fetch, written a batch at a time)."""

    __tablename__ = "artifact_fetches"
    __table_args__ = (Index("ix_artifact_fetches_project_at", "project", "at"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    project: Mapped[str] = mapped_column(String(63))
    site_id: Mapped[str] = mapped_column(String(36))
    kind: Mapped[str] = mapped_column(String(16))
    artifact: Mapped[str] = mapped_column(String(64))
    bytes: Mapped[int] = mapped_column(BigInteger)
    #: The first byte of the batch went out at ``since``; the batch was written at ``at``.
    since: Mapped[datetime]
    at: Mapped[datetime]


class PricePlan(Base):
    """One entry of the provider's price sheet: the default (project and app ''), a
    project's (app ''), or an app's. Amounts are decimal strings, exact."""

    __tablename__ = "price_plans"

    project: Mapped[str] = mapped_column(String(63), primary_key=True)
    app: Mapped[str] = mapped_column(String(63), primary_key=True)
    currency: Mapped[str] = mapped_column(String(3))
    free: Mapped[bool]
    instance_hour: Mapped[str] = mapped_column(String(40))
    vcpu_hour: Mapped[str] = mapped_column(String(40))
    gib_hour: Mapped[str] = mapped_column(String(40))
    gib_fetched: Mapped[str] = mapped_column(String(40))
    updated_at: Mapped[datetime]


class SiteCertificate(Base):
    """A certificate the CA issued to a site: its client certificate (``site``) or its
    site-local API's (``local``). Kept so that a re-join or a decommission can revoke
    them; the agent endpoints refuse a client certificate whose serial is revoked."""

    __tablename__ = "site_certificates"
    __table_args__ = (
        Index(
            "ix_site_certificates_revoked",
            "not_after",
            sqlite_where=text("revoked_at IS NOT NULL"),
            postgresql_where=text("revoked_at IS NOT NULL"),
        ),
    )

    serial: Mapped[str] = mapped_column(String(40), primary_key=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(8))
    not_after: Mapped[datetime]
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
