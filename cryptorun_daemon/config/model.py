"""The typed, frozen configuration of one region's daemon.

Nothing past the loader sees raw TOML: every choice is a ``Literal``, every
duration is seconds as ``float``, every path is a ``Path`` resolved against the
config file's folder.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Tier = Literal["hot", "warm", "cold"]
Mode = Literal["active-active", "active-passive"]
FeedKind = Literal["synthetic", "replay", "kraken"]
StateBackend = Literal["file", "etcd"]
LogFormat = Literal["auto", "json", "console"]
LogLevel = Literal["debug", "info", "warning", "error"]

TIERS: tuple[Tier, ...] = ("hot", "warm", "cold")
DEFAULT_MODE: dict[Tier, Mode] = {
    "hot": "active-active",
    "warm": "active-passive",
    "cold": "active-passive",
}


@dataclass(frozen=True)
class AdminConfig:
    host: str
    port: int
    token_file: Path | None
    max_request_bytes: int = 1 << 20
    shutdown_timeout: float = 10.0

    @property
    def listen(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class StorageConfig:
    root: Path


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


@dataclass(frozen=True)
class ReplicationConfig:
    # 8 parallel file pulls saturate loopback/disk on 2 cores (docs/BENCHMARKS.md).
    max_concurrency: int = 8
    step_max_partitions: int = 24
    request_timeout: float = 30.0
    peer_down_after: float = 30.0
    retry_attempts: int = 3


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

    @property
    def regions(self) -> tuple[str, ...]:
        """This region and every peer, sorted: the bounded set of region labels."""
        return tuple(sorted({self.region, *self.peers}))

    def rules_for(self, tier: Tier) -> tuple[Rule, ...]:
        return tuple(rule for rule in self.rules if rule.tier == tier)

    def replication_pairs(self) -> tuple[tuple[Tier, str, str], ...]:
        """Every ``(tier, from, to)`` the rules name."""
        return tuple(
            (rule.tier, rule.from_region, dst) for rule in self.rules for dst in rule.to_regions
        )
