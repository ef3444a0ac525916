"""Every Prometheus metric family the daemon exports, on a per-daemon registry.

The contract fixes names and label sets (``docs/CONTRACT.md``); this module
is the only place that declares them. Each daemon builds its own
``CollectorRegistry`` so two daemons in one test process never collide.

Label values come only from bounded sets (regions, tiers, checks, reasons and
kinds named in config or code), never from data.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

from cryptorun_daemon import __version__
from cryptorun_daemon.config.model import TIERS

CONSISTENCY_CHECKS: Final = ("schema", "staleness", "anomaly", "corrupt")
VALIDATION_CHECKS: Final = ("schema", "staleness", "drift", "anomaly", "corrupt")
QUARANTINE_KINDS: Final = ("row", "file", "fenced")
STEP_FAILURE_REASONS: Final = (
    "corrupt",
    "io",
    "peer_unreachable",
    "validation",
    "timeout",
    "fenced",
    "http",
)
# Buckets bracket the warm (60 s) and cold (5 min) lag SLOs so a histogram
# quantile can tell "well inside" from "about to breach".
FENCED_OPERATIONS: Final = ("seal", "serve", "apply")
# Why a locally ingested hot record was not taken (disk: the journal refused appends).
HOT_DROP_REASONS: Final = ("disk",)
# Why a call to a peer failed (security/peer_errors.py classifies).
PEER_ERROR_REASONS: Final = ("tls", "connect", "timeout", "protocol")
# Why the admin listener refused a TLS handshake (security/handshake.py classifies).
TLS_REFUSAL_REASONS: Final = ("plaintext", "client_certificate", "handshake")
# S3 error codes the object-store tier counts by name (storage/object_store.py
# classifies); anything else is counted as its HTTP class or "other".
OBJECT_STORE_ERROR_CODES: Final = (
    "SlowDown",
    "InternalError",
    "ServiceUnavailable",
    "RequestTimeout",
    "PreconditionFailed",
    "NoSuchKey",
    "NoSuchUpload",
    "NoSuchBucket",
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "BadDigest",
    "InvalidPart",
    "http_5xx",
    "http_4xx",
    "timeout",
    "connect",
    "other",
)
OBJECT_STORE_OPERATIONS: Final = ("get", "put", "head", "list", "copy", "delete", "multipart")
STEP_SECONDS_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
# Event-loop lateness: the 50 ms target sits between two buckets of its own.
LOOP_LAG_BUCKETS: Final = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class Metrics:
    """The daemon's metric families, bound to one ``CollectorRegistry``.

    Resource handling: the registry lives as long as this object; nothing is
    registered globally, so constructing many ``Metrics`` is safe.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry

        # --- contract families -------------------------------------------------
        self.replication_lag_seconds = Gauge(
            "cryptorun_replication_lag_seconds",
            "Seconds the destination is behind the source: now minus the seal time of the "
            "oldest source partition not yet committed (warm/cold) or minus the origin ingest "
            "time of the newest applied record (hot); 0 when in sync.",
            ["tier", "region", "source"],
            registry=r,
        )
        self.replication_plan_steps_total = Counter(
            "cryptorun_replication_plan_steps_total",
            "Replication steps planned.",
            ["tier", "from", "to"],
            registry=r,
        )
        self.replication_step_failures_total = Counter(
            "cryptorun_replication_step_failures_total",
            "Replication steps that failed, by bounded reason.",
            ["tier", "from", "to", "reason"],
            registry=r,
        )
        self.replication_step_seconds = Histogram(
            "cryptorun_replication_step_seconds",
            "Wall time of one replication step.",
            ["tier"],
            buckets=STEP_SECONDS_BUCKETS,
            registry=r,
        )
        self.replication_bytes_total = Counter(
            "cryptorun_replication_bytes_total",
            "Bytes transferred by replication.",
            ["tier", "from", "to"],
            registry=r,
        )
        self.replication_repairs_total = Counter(
            "cryptorun_replication_repairs_total",
            "Partitions copied by anti-entropy by tier and reason "
            "(missing, content, resync, initial).",
            ["tier", "reason"],
            registry=r,
        )
        self.event_loop_lag_seconds = Histogram(
            "cryptorun_event_loop_lag_seconds",
            "How late the event loop's periodic lag tick woke up.",
            buckets=LOOP_LAG_BUCKETS,
            registry=r,
        )
        self.data_consistency_errors_total = Counter(
            "cryptorun_data_consistency_errors_total",
            "Data consistency errors by check (schema, staleness, anomaly, corrupt).",
            ["check"],
            registry=r,
        )
        self.validation_errors_total = Counter(
            "cryptorun_validation_errors_total",
            "Validation findings by check, tier and region.",
            ["check", "tier", "region"],
            registry=r,
        )
        self.quarantine_total = Counter(
            "cryptorun_quarantine_total",
            "Quarantined items by tier, region and kind (row, file, fenced).",
            ["tier", "region", "kind"],
            registry=r,
        )
        self.hot_seq_gaps_total = Counter(
            "cryptorun_hot_seq_gaps_total",
            "Sequence gaps detected in a mirrored hot stream.",
            ["region", "origin"],
            registry=r,
        )
        self.hot_records_total = Counter(
            "cryptorun_hot_records_total",
            "Hot-tier records applied to the local log, by origin region.",
            ["region", "origin"],
            registry=r,
        )
        self.region_role = Gauge(
            "cryptorun_region_role",
            "Role of a region for a tier: 1 primary, 0 replica.",
            ["tier", "region"],
            registry=r,
        )
        self.failover_epoch = Gauge(
            "cryptorun_failover_epoch",
            "Current fencing epoch of a tier.",
            ["tier"],
            registry=r,
        )

        # --- daemon families ----------------------------------------------------
        self.build_info = Gauge(
            "cryptorun_build_info",
            "Build of the running daemon (always 1).",
            ["version"],
            registry=r,
        )
        self.task_restarts_total = Counter(
            "cryptorun_task_restarts_total",
            "Supervised worker restarts after a crash.",
            ["task"],
            registry=r,
        )
        self.ready = Gauge(
            "cryptorun_ready", "1 when the daemon is ready to serve, else 0.", registry=r
        )
        self.replication_slo_seconds = Gauge(
            "cryptorun_replication_slo_seconds",
            "Configured lag SLO for a tier and destination region.",
            ["tier", "region"],
            registry=r,
        )
        self.replication_pending_bytes = Gauge(
            "cryptorun_replication_pending_bytes",
            "Bytes sealed at the source and not yet committed at the destination.",
            ["tier", "region", "source"],
            registry=r,
        )
        self.replication_pending_partitions = Gauge(
            "cryptorun_replication_pending_partitions",
            "Partitions sealed at the source and not yet committed at the destination.",
            ["tier", "region", "source"],
            registry=r,
        )
        # --- object-store tiers (storage/object_store.py, storage/bucket_commit.py) ---
        self.object_store_errors_total = Counter(
            "cryptorun_object_store_errors_total",
            "Failed object-store requests (each attempt, retried or not), by operation and "
            "S3 error code.",
            ["op", "code"],
            registry=r,
        )
        self.object_store_bytes_total = Counter(
            "cryptorun_object_store_bytes_total",
            "Bytes written to (put) or read from (get) an object-store tier.",
            ["tier", "op"],
            registry=r,
        )
        self.replication_bytes_pending = Gauge(
            "cryptorun_replication_bytes_pending",
            "Bytes of sealed partitions not yet committed in this region's tier storage "
            "(the bucket for an object-store tier), like S3's BytesPendingReplication.",
            ["tier", "region"],
            registry=r,
        )
        self.catalog_ignored_paths_total = Counter(
            "cryptorun_catalog_ignored_paths_total",
            "Paths under storage.root outside the partition layout, skipped by a scan.",
            ["tier"],
            registry=r,
        )
        self.admin_rejected_total = Counter(
            "cryptorun_admin_rejected_total",
            "Admin API requests rejected, by bounded reason.",
            ["reason"],
            registry=r,
        )
        self.peer_errors_total = Counter(
            "cryptorun_peer_errors_total",
            "Failed calls to a peer region, by bounded reason (tls: its certificate "
            "failed verification or the handshake failed; never downgraded to plaintext).",
            ["peer", "reason"],
            registry=r,
        )
        self.admin_tls_refused_total = Counter(
            "cryptorun_admin_tls_refused_total",
            "Connections the admin listener refused during the TLS handshake, by bounded reason.",
            ["reason"],
            registry=r,
        )
        self.peer_up = Gauge(
            "cryptorun_peer_up",
            "1 when a peer region answered its last health probe, else 0.",
            ["peer"],
            registry=r,
        )
        self.fenced_total = Counter(
            "cryptorun_fenced_total",
            "Writes or serves refused because the writer's epoch was not current.",
            ["tier", "operation"],
            registry=r,
        )
        self.reconciled_partitions_total = Counter(
            "cryptorun_reconciled_partitions_total",
            "Partitions handled by rejoin reconciliation, by action (pulled, divergent).",
            ["tier", "action"],
            registry=r,
        )

        # --- hot tier ------------------------------------------------------------
        self.hot_duplicates_total = Counter(
            "cryptorun_hot_duplicates_total",
            "Mirrored hot records dropped as duplicates (seq <= last applied).",
            ["region", "origin"],
            registry=r,
        )
        self.hot_reconnects_total = Counter(
            "cryptorun_hot_reconnects_total",
            "Hot mirror client reconnects to a peer.",
            ["region", "origin"],
            registry=r,
        )
        self.hot_protocol_errors_total = Counter(
            "cryptorun_hot_protocol_errors_total",
            "Malformed, oversized or out-of-protocol mirror frames, by reason.",
            ["region", "reason"],
            registry=r,
        )
        self.hot_dropped_total = Counter(
            "cryptorun_hot_dropped_total",
            "Locally ingested hot records not taken into the log, by reason (disk: the "
            "journal refused appends after a failed write or fsync).",
            ["region", "reason"],
            registry=r,
        )
        self.hot_buffer_records = Gauge(
            "cryptorun_hot_buffer_records",
            "Records held in the local replay buffer.",
            ["region"],
            registry=r,
        )
        self.hot_buffer_bytes = Gauge(
            "cryptorun_hot_buffer_bytes",
            "Bytes held in the local replay buffer.",
            ["region"],
            registry=r,
        )
        self.hot_journal_bytes = Gauge(
            "cryptorun_hot_journal_bytes",
            "Bytes of hot journal segments on disk.",
            ["region"],
            registry=r,
        )
        self.hot_late_records_total = Counter(
            "cryptorun_hot_late_records_total",
            "Hot records that arrived after their hour was sealed (kept in a late-fill file).",
            ["region"],
            registry=r,
        )
        self.hot_source_switches_total = Counter(
            "cryptorun_hot_source_switches_total",
            "Changes of the authoritative source for a venue.",
            ["region", "venue"],
            registry=r,
        )
        self.hot_untracked_markets_total = Counter(
            "cryptorun_hot_untracked_markets_total",
            "Freshness observations dropped because hot.max_tracked_markets (venue, symbol) "
            "pairs are already tracked, by the origin that sent them.",
            ["region", "origin"],
            registry=r,
        )
        self.hot_subscribers_dropped_total = Counter(
            "cryptorun_hot_subscribers_dropped_total",
            "Mirror subscribers dropped (ping_timeout) or refused (over_cap) by this origin.",
            ["region", "reason"],
            registry=r,
        )
        self.hot_ingest_lag_seconds = Gauge(
            "cryptorun_hot_ingest_lag_seconds",
            "How far the hot log's appends trail a local feed: a synthetic or replay feed's "
            "delay behind its schedule, else receive-to-append time of its newest record.",
            ["region", "feed"],
            registry=r,
        )
        self.hot_clock_skew_seconds = Gauge(
            "cryptorun_hot_clock_skew_seconds",
            "Estimated origin clock minus local clock, from heartbeat round trips.",
            ["region", "origin"],
            registry=r,
        )

        # --- exchange ingest -------------------------------------------------------
        self.ingest_messages_total = Counter(
            "cryptorun_ingest_messages_total",
            "Exchange messages received, by venue and channel.",
            ["venue", "channel"],
            registry=r,
        )
        self.ingest_checksum_failures_total = Counter(
            "cryptorun_ingest_checksum_failures_total",
            "Order book checksum mismatches (each triggers a resubscribe).",
            ["venue", "symbol"],
            registry=r,
        )
        self.ingest_reconnects_total = Counter(
            "cryptorun_ingest_reconnects_total",
            "Exchange connection reconnects, by cause.",
            ["venue", "cause"],
            registry=r,
        )
        self.ingest_trade_id_gaps_total = Counter(
            "cryptorun_ingest_trade_id_gaps_total",
            "Gaps in an exchange's per-book trade id sequence.",
            ["venue", "symbol"],
            registry=r,
        )
        self.ingest_errors_total = Counter(
            "cryptorun_ingest_errors_total",
            "Exchange error replies and unparseable frames, by kind.",
            ["venue", "kind"],
            registry=r,
        )

        self.build_info.labels(version=__version__).set(1)
        self.ready.set(0)

    def preinitialise(
        self,
        *,
        region: str,
        regions: Iterable[str],
        replication_pairs: Iterable[tuple[str, str, str]],
    ) -> None:
        """Create the known series at 0 so dashboards and alerts see them at once.

        ``replication_pairs`` are ``(tier, from, to)`` triples taken from the rules.
        """
        regions = sorted(set(regions))
        for check in CONSISTENCY_CHECKS:
            self.data_consistency_errors_total.labels(check=check)
        for tier in TIERS:
            for check in VALIDATION_CHECKS:
                self.validation_errors_total.labels(check=check, tier=tier, region=region)
            for kind in QUARANTINE_KINDS:
                self.quarantine_total.labels(tier=tier, region=region, kind=kind)
        for origin in regions:
            self.hot_seq_gaps_total.labels(region=region, origin=origin)
            self.hot_records_total.labels(region=region, origin=origin)
            if origin != region:
                self.hot_duplicates_total.labels(region=region, origin=origin)
                self.hot_reconnects_total.labels(region=region, origin=origin)
        self.hot_late_records_total.labels(region=region)
        for reason in HOT_DROP_REASONS:
            self.hot_dropped_total.labels(region=region, reason=reason)
        for pair_tier, src, dst in replication_pairs:
            self.replication_plan_steps_total.labels(tier=pair_tier, **{"from": src, "to": dst})
            # Failure series exist from the start at 0 so increase() sees the first one.
            for reason in STEP_FAILURE_REASONS:
                self.replication_step_failures_total.labels(
                    tier=pair_tier, reason=reason, **{"from": src, "to": dst}
                )
            self.replication_bytes_total.labels(tier=pair_tier, **{"from": src, "to": dst})
            if dst == region:
                self.replication_lag_seconds.labels(tier=pair_tier, region=dst, source=src).set(0)
        for refusal in TLS_REFUSAL_REASONS:
            self.admin_tls_refused_total.labels(reason=refusal)
        for peer in regions:
            if peer != region:
                for peer_reason in PEER_ERROR_REASONS:
                    self.peer_errors_total.labels(peer=peer, reason=peer_reason)
        for tier in TIERS:
            self.replication_step_seconds.labels(tier=tier)
            for operation in FENCED_OPERATIONS:
                self.fenced_total.labels(tier=tier, operation=operation)

    def exposition(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)
