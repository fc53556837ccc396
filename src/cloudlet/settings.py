"""Settings for every Cloudlet component, loaded once at an entry point.

Precedence, lowest first: defaults, the TOML file (``--config`` or
``CLOUDLET_CONFIG``), environment variables, then command-line flags. The
environment prefix follows the nesting: ``CLOUDLET_CONTROLLER__DATABASE_URL``;
the most common ones also have a short alias (``CLOUDLET_DATABASE_URL``).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cloudlet.errors import ConfigError

#: The site-local API's port unless configured: the same at every agent start.
DEFAULT_LOCAL_PORT = 7480


class MobilitySettings(BaseModel):
    """When the controller moves instances: failover, following clients, draining, load."""

    interval_s: float = Field(2.0, gt=0, description="Seconds between relocation passes.")
    handoff_timeout_s: float = Field(
        120.0, gt=0, description="A handoff whose source sent no state by then is given up."
    )
    follow_margin_ms: float = Field(
        2.0,
        ge=0,
        description="Hysteresis: a client-following instance moves only to a site this much "
        "closer (estimated RTT) than its own.",
    )
    min_dwell_s: float = Field(
        30.0, ge=0, description="Hysteresis: no automatic move sooner than this after the last."
    )
    rebalance: bool = Field(
        False,
        description="Shed load from overloaded sites by handoff. Off unless asked for: "
        "sites that share one host (tests, demos, a lab) all report that host's load.",
    )
    overload: float = Field(
        0.9, gt=0, le=1, description="CPU or memory fraction above which a site sheds load."
    )
    overload_for_s: float = Field(
        60.0, ge=0, description="How long a site must stay overloaded before it sheds."
    )
    relay: bool = Field(
        True,
        description="Run the handoff relay: a VM handoff whose source cannot reach its "
        "destination goes through the controller instead.",
    )
    relay_host: str | None = Field(
        None, description="Address the relay listens on (default: the controller's host)."
    )
    relay_port: int = Field(
        8081, ge=0, lt=65536, description="Port the relay listens on (0: any free one)."
    )
    relay_address: str | None = Field(
        None,
        max_length=255,
        description="host:port agents dial to reach the relay (default: the host each "
        "agent reaches the controller at, with relay_port). Set it with replicas on "
        "several hosts or behind a load balancer: a handoff's two sites meet at the relay "
        "of the replica that opened it.",
    )
    relay_wait_s: float = Field(
        120.0, gt=0, description="Longest one side of a handoff waits at the relay for the other."
    )
    relay_idle_s: float = Field(
        120.0, gt=0, description="A relayed stream silent both ways this long is cut."
    )
    relay_max_waiting: int = Field(
        256, gt=0, description="Connections the relay holds unpaired at once; more are refused."
    )


class AlarmSettings(BaseModel):
    """Alarms: the site.offline hysteresis and the optional webhook told of raises and clears."""

    clear_hold_s: float = Field(
        5.0,
        ge=0,
        description="Hysteresis: site.offline clears only once the site has stayed online "
        "this long without a break (a flapping site keeps its one alarm). Keep it longer "
        "than a flap's up time and shorter than the agents' report interval, so that a "
        "recovery clears within one report.",
    )
    sync_lag_s: float = Field(
        120.0,
        gt=0,
        description="site.sync-lag is raised for an online site whose applied revision has "
        "stayed behind its desired revision this long; it clears once the site is in sync.",
    )
    webhook_url: str | None = Field(
        None, description="URL that receives each raise and clear as a JSON POST (none: off)."
    )
    webhook_timeout_s: float = Field(5.0, gt=0, description="Timeout of one webhook POST.")
    webhook_retries: int = Field(
        5, ge=0, description="Retries of a failed POST, with doubling delays, before it is dropped."
    )
    webhook_backoff_s: float = Field(0.5, gt=0, description="Delay before the first retry.")
    webhook_queue: int = Field(
        1000, gt=0, description="Notices waiting to be sent; past it the newest are dropped."
    )


class BlobSettings(BaseModel):
    """Where the controller keeps published artifacts: images, overlays, agent packages."""

    backend: Literal["filesystem", "s3"] = Field(
        "filesystem",
        description="filesystem: files under `path` (a shared mount serves several "
        "replicas); s3: objects in an S3-compatible bucket.",
    )
    path: Path | None = Field(
        None, description="The filesystem backend's root (default: data_dir/artifacts)."
    )
    uploads_dir: Path | None = Field(
        None,
        description="Uploads in progress (default: data_dir/uploads). With several replicas, "
        "a mount they share, unless each upload's requests reach one replica.",
    )
    bucket: str | None = Field(None, description="The S3 bucket (s3 backend; it must exist).")
    prefix: str = Field("", description="Prepended to every S3 key, e.g. `cloudlet/`.")
    endpoint_url: str | None = Field(
        None, description="An S3-compatible server's URL (default: AWS's for the region)."
    )
    region: str | None = Field(None, description="The S3 region (default: us-east-1).")
    access_key_id: str | None = Field(
        None, description="S3 credentials (default: boto3's chain: AWS_* variables, files, roles)."
    )
    secret_access_key: SecretStr | None = Field(None, description="Goes with access_key_id.")
    addressing_style: Literal["auto", "path", "virtual"] = Field(
        "auto", description="S3 bucket addressing; most self-hosted servers want `path`."
    )
    multipart_threshold_mib: int = Field(
        64, ge=5, description="Blobs at least this large are put to S3 in a multipart upload."
    )
    multipart_chunk_mib: int = Field(
        16, ge=5, description="Size of one part of a multipart upload (S3's minimum is 5)."
    )

    @model_validator(mode="after")
    def _s3_needs_a_bucket(self) -> BlobSettings:
        if self.backend == "s3" and not self.bucket:
            raise ValueError("blobs.backend = s3 needs blobs.bucket")
        return self


class TlsSettings(BaseModel):
    """The controller's CA, its HTTPS and the certificates it issues to sites (docs/tls.md)."""

    insecure: bool = Field(
        False,
        description="Serve plain HTTP and accept agents without client certificates "
        "(development only; `--insecure`).",
    )
    ca_cert_file: Path | None = Field(
        None,
        description="The operator's CA certificate (PEM); with ca_key_file. Default: a CA "
        "made at first start in data_dir/ca.crt and data_dir/ca.key (mode 0600). Give "
        "every replica the same pair.",
    )
    ca_key_file: Path | None = Field(None, description="The CA's private key (PEM), 0600.")
    names: list[str] = Field(
        default_factory=list,
        description="Host names and addresses the controller's server certificate names, "
        "besides localhost, 127.0.0.1, ::1, this host's name and the listen address: "
        "every name agents and clients reach it by (a load balancer's too).",
    )
    site_cert_validity_s: float = Field(
        30 * 86400.0,
        ge=5,
        description="Lifetime of a site's client and site-local API certificates; agents "
        "renew at two thirds of it.",
    )
    server_cert_validity_s: float = Field(
        365 * 86400.0,
        ge=60,
        description="Lifetime of the controller's own server certificate "
        "(it is issued afresh at every start).",
    )
    revocation_refresh_s: float = Field(
        2.0,
        gt=0,
        description="How stale the revoked-serial list a replica checks may be (another "
        "replica's revocation takes effect within this).",
    )


class ControllerSettings(BaseModel):
    data_dir: Path = Field(Path("./cloudlet-data"), description="Database, admin token, keys.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default: SQLite in the data directory."
    )
    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8080, ge=0, lt=65536, description="Port to listen on (0: any free one).")
    offline_grace_s: float = Field(
        30.0, gt=0, description="Silence after which a site is declared offline."
    )
    long_poll_max_s: float = Field(30.0, gt=0, description="Longest a desired-state pull waits.")
    tombstone_retention: int = Field(
        1000, gt=0, description="Deletions kept per site for deltas; older cursors get a snapshot."
    )
    metrics_token: str | None = Field(
        None,
        min_length=16,
        description="A bearer token that may read /metrics only (an admin token may too).",
    )
    max_seq_jump: int = Field(
        100_000,
        gt=0,
        description="Furthest an event's sequence may run past a site's last acknowledged "
        "one (events past it are refused).",
    )
    client_token_key_file: Path | None = Field(
        None,
        description="PEM Ed25519 private key client tokens are signed with (default: one "
        "made at first start in data_dir/client-token.key, mode 0600).",
    )
    login_token_ttl_s: int = Field(
        12 * 3600,
        ge=60,
        description="Longest a login token lives (a sign-in may ask for less).",
    )
    log_level: str = Field("info", description="Python log level.")
    mobility: MobilitySettings = Field(default_factory=MobilitySettings)
    alarms: AlarmSettings = Field(default_factory=AlarmSettings)
    blobs: BlobSettings = Field(default_factory=BlobSettings)
    tls: TlsSettings = Field(default_factory=TlsSettings)


class AgentSettings(BaseModel):
    data_dir: Path = Field(Path("./cloudlet-agent"), description="Local store, logs, workloads.")
    controller_url: str | None = Field(
        None,
        description="Base URL of the controller, or its replicas' URLs separated by commas "
        "(the agent moves to the next when one stops answering).",
    )
    join_token: str | None = Field(None, description="One-time token, needed only to enroll.")
    driver: str = Field("process", description="Compute driver: process, fake or qemu.")
    poll_wait_s: float = Field(25.0, gt=0, description="Long-poll wait asked of the controller.")
    report_interval_s: float = Field(10.0, gt=0, description="Heartbeat / report interval.")
    reconcile_interval_s: float = Field(5.0, gt=0, description="Periodic reconcile interval.")
    usage_interval_s: float = Field(60.0, gt=0, description="Usage record period per instance.")
    outbox_cap: int = Field(
        50_000,
        ge=10,
        description="Soft cap on unsent events: past it, back-to-back usage records are "
        "merged and repeated alarms folded (nothing billed or lifecycle is dropped).",
    )
    crash_loop_restarts: int = Field(
        3,
        gt=0,
        description="Restarts (made by the driver after the workloads exited on their own) "
        "that raise instance.crash-loop.",
    )
    crash_loop_stable_s: float = Field(
        60.0,
        gt=0,
        description="Hysteresis: instance.crash-loop clears once the workloads have run this "
        "long without a restart (and is raised again only after a new restart).",
    )
    disk_low_at: float = Field(
        0.9,
        gt=0,
        le=1,
        description="site.disk-low is raised once the data directory's disk is this full "
        "(a fraction), and cleared once it is 5 points below.",
    )
    cache_full_at: float = Field(
        0.9,
        gt=0,
        le=1,
        description="site.cache-full is raised once the artifacts the site must keep fill "
        "this much of cache_budget_gib (a fraction), and cleared 5 points below.",
    )
    backoff_max_s: float = Field(30.0, gt=0, description="Longest retry delay when unreachable.")
    handoff_resume_within_s: float = Field(
        60.0,
        gt=0,
        description="A VM handoff whose link to the other site broke is resumed if a new "
        "connection succeeds within this long (the source retries with backoff); past it "
        "the handoff fails and the VM runs on at the source.",
    )
    link_dead_after_s: float = Field(
        10.0,
        gt=0,
        description="A connection to the controller whose link stays silent this long "
        "(data unacknowledged, or keepalive probes unanswered) is dropped, so that a cut "
        "link is noticed and a restored one found on a fresh connection.",
    )
    probe_interval_s: float = Field(
        1.0,
        gt=0,
        description="While the controller is unreachable, how often (jittered 0.5-1.5x) to "
        "probe its /healthz, so that a returning controller is found at once.",
    )
    reconnect_spread_s: float = Field(
        1.0,
        ge=0,
        description="Once a probe finds the controller back, retry after a random delay up "
        "to this: a fleet's reconnections spread over it (size it as sites / syncs per "
        "second the controller sustains).",
    )
    local_host: str = Field("127.0.0.1", description="Site-local API address.")
    local_port: int = Field(
        DEFAULT_LOCAL_PORT,
        ge=0,
        lt=65536,
        description="Site-local API port: fixed, since clients and DNS-SD records point at it "
        "(0: any free port, written to data_dir/local-api.port).",
    )
    local_token: str | None = Field(
        None,
        min_length=16,
        description="Bearer token starting and stopping instances at the site-local API "
        "needs when it binds beyond loopback (default: one made in data_dir/local-api.token).",
    )
    workload_host: str = Field("127.0.0.1", description="Address workloads listen on.")
    keep_workloads: bool = Field(
        False, description="Leave workloads running when the agent stops (default: stop them)."
    )
    log_level: str = Field("info", description="Python log level.")
    cache_dir: Path | None = Field(
        None, description="Artifact cache: base images and overlays (default: data_dir/cache)."
    )
    cache_budget_gib: float = Field(
        20.0,
        gt=0,
        description="Cache size beyond which least recently used, unpinned artifacts go.",
    )
    prestage_interval_s: float = Field(
        30.0, gt=0, description="How often to check for desired images missing from the cache."
    )
    vm_accel: str = Field(
        "auto",
        pattern="^(auto|kvm|tcg)$",
        description="VM accelerator for the qemu driver: kvm, tcg or auto (KVM if it works).",
    )
    vm_answer_timeout_s: float = Field(
        120.0, gt=0, description="Longest wait for a started VM's service to answer HTTP."
    )
    handoff_direct_timeout_s: float = Field(
        3.0,
        gt=0,
        description="A VM handoff's source tries to connect to its destination this long "
        "before it goes through the controller's relay.",
    )
    announce: bool = Field(
        True, description="Announce the site-local API by DNS-SD (_cloudlet._tcp) on the LAN."
    )
    upgrade_deadline_s: float = Field(
        60.0,
        gt=0,
        description="How long an upgraded agent has, from its start, to be healthy (its "
        "site-local API answers and a reconcile pass ran) before the supervisor rolls it back.",
    )
    insecure: bool = Field(
        False,
        description="Talk plain HTTP to the controller, without a site certificate, and "
        "serve the site-local API over plain HTTP (development only; `--insecure`).",
    )
    ca_file: Path | None = Field(
        None,
        description="The controller's CA certificate to trust at join (PEM). Or give "
        "ca_fingerprint. After join the agent pins the CA it stored in data_dir/tls.",
    )
    ca_fingerprint: str | None = Field(
        None,
        max_length=200,
        description="SHA-256 fingerprint of the controller's CA (`cloudlet controller ca`): "
        "at join the agent fetches GET /v1/ca and trusts it only if it matches.",
    )
    local_names: list[str] = Field(
        default_factory=list,
        description="Extra host names or addresses the site-local API's certificate names "
        "(besides localhost, 127.0.0.1 and local_host or this host's primary address).",
    )
    renew_at: float = Field(
        2 / 3,
        gt=0,
        lt=1,
        description="Fraction of its lifetime after which the site certificate is renewed.",
    )

    @property
    def artifact_dir(self) -> Path:
        """Where the artifact cache lives."""
        return self.cache_dir if self.cache_dir is not None else self.data_dir / "cache"


class Settings(BaseSettings):
    """The root: one section per component."""

    model_config = SettingsConfigDict(
        env_prefix="CLOUDLET_", env_nested_delimiter="__", extra="forbid"
    )

    controller: ControllerSettings = Field(default_factory=ControllerSettings)
    agent: AgentSettings = Field(default_factory=AgentSettings)
    controller_url: str | None = Field(
        None,
        validation_alias=AliasChoices("CLOUDLET_URL", "controller_url"),
        description="Where the CLI finds the controller.",
    )
    token: str | None = Field(
        None,
        validation_alias=AliasChoices("CLOUDLET_TOKEN", "token"),
        description="Bearer token the CLI sends (default: the admin token file).",
    )
    ca_file: Path | None = Field(
        None,
        validation_alias=AliasChoices("CLOUDLET_CA_FILE", "ca_file"),
        description="The fleet's CA certificate the CLI verifies the controller and sites "
        "with (GET /v1/ca; default: the system's trust store).",
    )


# Short environment aliases for the settings operators set most.
_ALIASES = {
    "CLOUDLET_DATABASE_URL": ("controller", "database_url"),
    "CLOUDLET_DATA_DIR": ("controller", "data_dir"),
    "CLOUDLET_JOIN_TOKEN": ("agent", "join_token"),
}


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build settings from defaults, a TOML file, the environment and ``overrides``.

    ``overrides`` are flag values, nested as ``controller={"port": 9000}``; None
    values are dropped so an unset flag does not hide the file or environment.

    Raises:
        ConfigError: the file is missing or malformed, or a value is invalid.
    """
    file_values: dict[str, Any] = {}
    path = config_file or (Path(p) if (p := os.environ.get("CLOUDLET_CONFIG")) else None)
    if path is not None:
        try:
            file_values = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    for env, (section, key) in _ALIASES.items():
        if env in os.environ:
            file_values.setdefault(section, {})[key] = os.environ[env]
    try:
        from_env = Settings()
    except ValueError as exc:
        raise ConfigError(f"invalid CLOUDLET_* environment: {exc}") from exc
    env_values = from_env.model_dump(exclude_unset=True)
    flags = {
        k: ({kk: vv for kk, vv in v.items() if vv is not None} if isinstance(v, dict) else v)
        for k, v in overrides.items()
        if v is not None
    }
    merged = _deep_merge(_deep_merge(file_values, env_values), flags)
    try:
        return Settings.model_validate(merged)
    except ValueError as exc:
        raise ConfigError(f"invalid settings: {exc}") from exc
