"""The typed, frozen configuration of one region's daemon.

Nothing past the loader sees raw TOML: every choice is a ``Literal``, every
duration is seconds as ``float``, every path is a ``Path`` resolved against the
config file's folder.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal, TypeGuard, get_args

# --- the names every module shares (the one definition of each) ------------------

#: The storage tiers. Hot is active-active (every region ingests its own feeds);
#: warm and cold are active-passive (one primary region, a fencing epoch).
Tier = Literal["hot", "warm", "cold"]
ActivePassiveTier = Literal["warm", "cold"]
TIERS: Final[tuple[Tier, ...]] = get_args(Tier)
ACTIVE_PASSIVE_TIERS: Final[tuple[ActivePassiveTier, ...]] = get_args(ActivePassiveTier)

#: What a region name looks like, everywhere: config, state stores, the API, the
#: ``origin`` field of records. Short lowercase labels, safe in paths and metric labels.
REGION_NAME_PATTERN: Final = "[a-z][a-z0-9-]*"
_REGION_NAME: Final = re.compile(REGION_NAME_PATTERN)


def is_active_passive(tier: object) -> TypeGuard[ActivePassiveTier]:
    """True for the tiers that have a primary (warm, cold)."""
    return tier in ACTIVE_PASSIVE_TIERS


def is_region_name(name: object) -> TypeGuard[str]:
    """True when ``name`` is a string matching :data:`REGION_NAME_PATTERN` in full."""
    return isinstance(name, str) and _REGION_NAME.fullmatch(name) is not None


Mode = Literal["active-active", "active-passive"]
FeedKind = Literal["synthetic", "replay", "kraken"]
StateBackend = Literal["file", "etcd"]
LogFormat = Literal["auto", "json", "console"]
LogLevel = Literal["debug", "info", "warning", "error"]

DEFAULT_MODE: Final[dict[Tier, Mode]] = {
    tier: "active-passive" if is_active_passive(tier) else "active-active" for tier in TIERS
}


#: The credentials' roles (docs/API.md lists which endpoints each opens).
Scope = Literal["operator", "peer", "read"]
SCOPES: Final[tuple[Scope, ...]] = get_args(Scope)


@dataclass(frozen=True)
class TokenFiles:
    """``[admin.tokens]``: one bearer-token file per scope (each optional)."""

    operator_file: Path | None = None
    peer_file: Path | None = None
    read_file: Path | None = None

    def by_scope(self) -> dict[Scope, Path]:
        """Scope → file, for the scopes that have one."""
        files: dict[Scope, Path | None] = {
            "operator": self.operator_file,
            "peer": self.peer_file,
            "read": self.read_file,
        }
        return {scope: path for scope, path in files.items() if path is not None}


@dataclass(frozen=True)
class AdminConfig:
    """``[admin]``: the listener, its TLS and who may call what.

    ``token_file`` (the contract's one shared token) grants every scope;
    ``tokens`` holds one file per scope. ``open_reads``: ``/metrics`` and
    ``/v1/status`` answer without a credential (the loader allows it on a
    loopback listener only, and defaults it to true there).
    """

    host: str
    port: int
    token_file: Path | None
    max_request_bytes: int = 1 << 20
    shutdown_timeout: float = 10.0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    allow_plaintext: bool = False
    open_reads: bool = True
    tokens: TokenFiles = field(default_factory=TokenFiles)

    @property
    def tls(self) -> bool:
        """Whether the listener speaks TLS."""
        return self.tls_cert is not None

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def listen(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class PeerTLSConfig:
    """``[peers] ca_file / cert / key``: how this region verifies peers and proves itself.

    ``ca_file`` None trusts the system store for ``https://`` peers; ``cert``
    and ``key`` are presented to peers that require mutual TLS.
    """

    ca_file: Path | None = None
    cert: Path | None = None
    key: Path | None = None


@dataclass(frozen=True)
class ObjectStoreTier:
    """``[storage.tiers.warm|cold]``: this tier's partitions live in an S3-compatible bucket.

    ``url`` is ``s3://bucket[/prefix]``; keys below it follow the partition
    layout (``storage/layout.py``). Credentials are never part of the config:
    they come the standard AWS ways (environment, shared config file, instance
    role). ``allow_http`` permits a plain-HTTP ``endpoint_url`` (loopback test
    servers only). ``accept_weak_fencing`` lets this region act as primary on a
    store that does not enforce conditional writes (docs/OPERATIONS.md).
    """

    url: str
    bucket: str
    prefix: str
    endpoint_url: str | None = None
    region: str | None = None
    allow_http: bool = False
    accept_weak_fencing: bool = False
    #: Files of at least this many bytes go up as resumable multipart uploads.
    multipart_threshold: int = 8 << 20
    #: Bytes per multipart part (S3's minimum for all but the last part is 5 MiB).
    part_size: int = 8 << 20
    #: Multipart uploads older than this, and not ours to resume, are aborted.
    orphan_upload_age: float = 86_400.0
    request_timeout: float = 30.0
    retry_attempts: int = 5
    #: Parallel object transfers per tier.
    concurrency: int = 8


@dataclass(frozen=True)
class StorageConfig:
    """``[storage]``: the local root (state, staging, cache) and optional object-store tiers.

    A tier absent from ``tiers`` lives on local disk under ``root`` (the default).
    ``sources`` (``[storage.sources.REGION.TIER]``): the bucket where a peer
    region keeps a tier; a replica pulling that tier from that region reads
    the file bytes from there instead of through the peer's admin API.
    """

    root: Path
    tiers: Mapping[ActivePassiveTier, ObjectStoreTier] = field(default_factory=dict)
    sources: Mapping[str, Mapping[ActivePassiveTier, ObjectStoreTier]] = field(default_factory=dict)


@dataclass(frozen=True)
class Rule:
    """Replicate ``tier`` from one region to others, within ``lag_slo`` seconds."""

    tier: Tier
    mode: Mode
    from_region: str
    to_regions: tuple[str, ...]
    lag_slo: float


@dataclass(frozen=True)
class LogConfig:
    level: LogLevel = "info"
    format: LogFormat = "auto"


@dataclass(frozen=True)
class StateConfig:
    """Where roles and fencing epochs live (file: embedded; etcd: shared coordinator)."""

    backend: StateBackend = "file"
    etcd_endpoints: tuple[str, ...] = ()
    etcd_prefix: str = "/cryptorun"
    lease_ttl: float = 10.0
    auto_failover: bool = False
    auto_failover_min_interval: float = 300.0
    #: etcd over TLS: the CA that signed etcd's certificate, and this region's
    #: client certificate for etcd's ``--client-cert-auth``.
    etcd_ca_file: Path | None = None
    etcd_cert: Path | None = None
    etcd_key: Path | None = None
    #: etcd's own authentication (``etcdctl auth enable``): user and password file.
    etcd_user: str | None = None
    etcd_password_file: Path | None = None
    #: Seconds of this region's etcd lease that must remain for it to seal or
    #: commit as primary; ``None``: derived, see :meth:`write_safety_margin`.
    lease_safety_margin: float | None = None

    def write_safety_margin(self) -> float:
        """The lease time a primary must still hold to write: configured, else ``lease_ttl / 4``.

        Heartbeats renew every ``lease_ttl / 3``, so a healthy lease never has
        less than about two thirds of its TTL left; a quarter leaves room for
        one lost beat plus a slow renewal before writes stop, and stops them
        well before etcd can expire the lease (docs/FAILOVER_STORES.md).
        """
        if self.lease_safety_margin is not None:
            return self.lease_safety_margin
        return self.lease_ttl / 4


@dataclass(frozen=True)
class ReplicationConfig:
    # 8 parallel file pulls saturate loopback/disk on 2 cores (docs/BENCHMARKS.md).
    max_concurrency: int = 8
    step_max_partitions: int = 24
    request_timeout: float = 30.0
    peer_down_after: float = 30.0
    retry_attempts: int = 3
    # Change feed and anti-entropy (docs/WARM_COLD.md#change-feed).
    feed_retention: int = 100_000
    feed_poll_interval: float = 0.5
    anti_entropy_interval: float = 600.0
    scrub_interval: float = 3600.0
    # Partitions validated at once (validators decode whole Parquet files).
    max_validations: int = 2
    # ...by a bucket → bucket replica (spooled files): one validation keeps up with a
    # bucket transfer and holds one decoded file (docs/BENCHMARKS.md, object store).
    max_bucket_validations: int = 1
    # Partitions such a replica downloads into its spool (or has judged there) at once:
    # each completes at the source's full rate instead of all sharing it.
    bucket_spool_partitions: int = 2


@dataclass(frozen=True)
class HotConfig:
    buffer_records: int = 200_000
    buffer_bytes: int = 64 << 20
    fsync_interval: float = 0.1
    fsync_records: int = 1000
    segment_bytes: int = 64 << 20
    partition_length: float = 3600.0
    seal_grace: float = 30.0
    heartbeat_interval: float = 1.0
    max_frame_bytes: int = 4 << 20
    freshness_gate: float = 5.0
    # Bounds on state peers can make this region hold (issue 12, item 7).
    max_tracked_markets: int = 10_000
    max_subscribers: int = 16
    subscriber_timeout: float = 15.0


@dataclass(frozen=True)
class FeedConfig:
    """One exchange or synthetic feed ingested locally."""

    name: str
    kind: FeedKind
    venue: str
    symbols: tuple[str, ...]
    rate: float = 10.0
    seed: int = 1
    path: Path | None = None
    url: str | None = None
    book_depth: int = 10
    speed: float = 1.0
    heartbeat_timeout: float = 15.0


@dataclass(frozen=True)
class AnomalyConfig:
    window: int = 500
    min_samples: int = 50
    threshold: float = 3.5
    min_relative_move: float = 0.0005
    floor_bps: float = 1.0


@dataclass(frozen=True)
class ValidationConfig:
    strict: bool = False
    staleness: Mapping[Tier, float] = field(
        default_factory=lambda: {"hot": 5.0, "warm": 60.0, "cold": 60.0}
    )
    drift_tolerance: float = 2.0
    anomaly: AnomalyConfig = field(default_factory=AnomalyConfig)


@dataclass(frozen=True)
class Config:
    """A region's whole configuration, as loaded from one TOML file."""

    source: Path
    region: str
    admin: AdminConfig
    storage: StorageConfig
    peers: Mapping[str, str]
    rules: tuple[Rule, ...]
    log: LogConfig = field(default_factory=LogConfig)
    state: StateConfig = field(default_factory=StateConfig)
    replication: ReplicationConfig = field(default_factory=ReplicationConfig)
    hot: HotConfig = field(default_factory=HotConfig)
    feeds: tuple[FeedConfig, ...] = ()
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    peer_tls: PeerTLSConfig = field(default_factory=PeerTLSConfig)

    @property
    def regions(self) -> tuple[str, ...]:
        """This region and every peer, sorted: the bounded set of region labels."""
        return tuple(sorted({self.region, *self.peers}))

    def rules_for(self, tier: Tier) -> tuple[Rule, ...]:
        return tuple(rule for rule in self.rules if rule.tier == tier)

    def bootstrap_primary(self, tier: str) -> str | None:
        """The region the config names as primary of ``tier`` before any failover.

        The rule: the ``from`` of the first ``[[rules]]`` entry for an
        active-passive tier (warm, cold). ``None`` for hot (active-active: no
        primary) and for a tier no rule names. The loader refuses two
        active-passive rules of one tier with different ``from``, so "the first"
        is "the only one" in a loaded config. Once the state store holds the
        tier, its primary wins over this value (see ``failover/component.py``).
        """
        if not is_active_passive(tier):
            return None
        return next((r.from_region for r in self.rules if r.tier == tier), None)

    def replication_pairs(self) -> tuple[tuple[Tier, str, str], ...]:
        """Every ``(tier, from, to)`` the rules name."""
        return tuple(
            (rule.tier, rule.from_region, dst) for rule in self.rules for dst in rule.to_regions
        )
