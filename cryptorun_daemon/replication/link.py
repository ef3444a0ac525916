"""One replication link: pull ``tier`` from one source region into this region.

A pass is: probe the peer → list its sealed partitions → scan what is
committed here → publish lag → plan → run the steps → publish lag again.
An unhealthy or fenced peer ends the pass early with a recorded reason and no
steps (the scheduler simply tries again next interval).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from cryptorun_daemon.config import Rule, Tier
from cryptorun_daemon.errors import ReplicationError
from cryptorun_daemon.metrics import Metrics
from cryptorun_daemon.replication.executor import StepOutcome, WarmColdExecutor
from cryptorun_daemon.replication.lag import IN_SYNC, LagReport, compute_lag
from cryptorun_daemon.replication.planner import committed_index, listed, plan_replication
from cryptorun_daemon.replication.rules import TimeRange
from cryptorun_daemon.replication.transport_http import HttpPeer
from cryptorun_daemon.runtime.clock import Clock
from cryptorun_daemon.storage.catalog import Catalog
from cryptorun_daemon.timefmt import format_rfc3339

log = structlog.get_logger("cryptorun.replication")

# Scheduled passes consider everything sealed up to now; the PIT rule still
# drops anything whose span has not ended.
BEGINNING_OF_TIME = datetime(1970, 1, 1, tzinfo=UTC)
# Past the end of any partition that can already be sealed (a cold day starts <= now).
OPEN_END = timedelta(days=2)


@dataclass
class PassReport:
    """What one pass did (returned by ``POST /v1/replication/sync``)."""

    tier: Tier
    source: str
    started_at: datetime
    seconds: float = 0.0
    reason: str | None = None
    steps: int = 0
    failed_steps: int = 0
    partitions_committed: int = 0
    bytes_transferred: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)
    lag: LagReport = IN_SYNC

    @property
    def ok(self) -> bool:
        return self.reason is None and self.failed_steps == 0

    def to_json(self) -> dict[str, Any]:
        return {
            "tier": self.tier,
            "source": self.source,
            "started_at": format_rfc3339(self.started_at),
            "seconds": round(self.seconds, 3),
            "ok": self.ok,
            "reason": self.reason,
            "steps": self.steps,
            "failed_steps": self.failed_steps,
            "partitions_committed": self.partitions_committed,
            "bytes": self.bytes_transferred,
            "failures": self.failures,
            **self.lag.to_json(),
        }


class ReplicationLink:
    """State and pass logic for one (tier, source → this region) pair.

    Error handling: peer, listing and step failures are recorded in
    :attr:`last_error` and the report; nothing but programming errors
    escapes :meth:`run_pass`.
    """

    def __init__(
        self,
        *,
        rule: Rule,
        region: str,
        peer: HttpPeer,
        catalog: Catalog,
        executor: WarmColdExecutor,
        metrics: Metrics,
        clock: Clock,
        epoch_provider: Callable[[Tier], int],
        step_max_partitions: int,
        max_concurrency: int,
        peer_reporter: Callable[[str, bool, str | None], None] | None = None,
    ) -> None:
        self.rule = rule
        self.tier = rule.tier
        self.source = peer.region
        self.region = region
        self.peer = peer
        self.catalog = catalog
        self.executor = executor
        self.metrics = metrics
        self.clock = clock
        self._epoch = epoch_provider
        self._step_max = step_max_partitions
        self._step_slots = asyncio.Semaphore(max_concurrency)
        self.lag: LagReport | None = None
        self.last_success: datetime | None = None
        self.last_error: str | None = None
        self.last_error_at: datetime | None = None
        self.last_pass: PassReport | None = None
        self.peer_healthy: bool | None = None
        # Peer health (and cryptorun_peer_up) is owned by the failover component;
        # a pull is one more observation of the peer, reported there.
        self._report_peer = peer_reporter

    async def run_pass(self) -> PassReport:
        started = time.monotonic()
        report = PassReport(self.tier, self.source, self.clock.now())
        try:
            await self._pass(report)
        except ReplicationError as exc:
            report.reason = str(exc)
        report.seconds = time.monotonic() - started
        if report.ok:
            self.last_success = report.started_at
        else:
            self.last_error = report.reason or "; ".join(
                f"{f['reason']}: {f['detail']}" for f in report.failures[:3]
            )
            self.last_error_at = report.started_at
        self.last_pass = report
        return report

    async def _pass(self, report: PassReport) -> None:
        health = await self.peer.probe()
        self.peer_healthy = health.healthy
        if self._report_peer is not None:
            self._report_peer(self.source, health.healthy, health.reason)
        if not health.healthy:
            report.reason = health.reason or f"peer {self.source} unhealthy"
            report.lag = self.lag or IN_SYNC
            return
        listing = await self.peer.list_partitions(self.tier)
        current_epoch = self._epoch(self.tier)
        if listing.epoch < current_epoch:
            report.reason = (
                f"{self.source} serves {self.tier} at epoch {listing.epoch}, older than the "
                f"current epoch {current_epoch}: it is fenced, nothing is pulled from it"
            )
            return
        # Fencing at the replica: manifests this root's fence proves were written
        # by a fenced writer are quarantined as "fenced", never planned or awaited.
        manifests = await asyncio.to_thread(self.executor.accepted, listing.manifests)
        now = self.clock.now()
        committed = committed_index(
            await asyncio.to_thread(self.catalog.sealed_manifests, self.tier)
        )
        report.lag = self._publish(compute_lag(manifests, committed, now))
        plan = plan_replication(
            tier=self.tier,
            from_region=self.source,
            to_region=self.region,
            # A standing link replicates everything sealed so far: its window is open
            # at the far end (the current day's partitions lie inside it); "nothing in
            # the future" is the planner's own check against ``now``.
            window=TimeRange(BEGINNING_OF_TIME, now + OPEN_END),
            source=listed(manifests),
            destination=committed,
            now=now,
            step_max_partitions=self._step_max,
            validators=[_name(v) for v in self.executor.validators],
        )
        report.steps = len(plan.steps)
        if not plan.steps:
            return
        self.metrics.replication_plan_steps_total.labels(
            tier=self.tier, **{"from": self.source, "to": self.region}
        ).inc(len(plan.steps))
        by_path = {m.partition: m for m in manifests}

        async def run(step_index: int) -> StepOutcome:
            async with self._step_slots:
                return await self.executor.run_step(plan.steps[step_index], by_path)

        outcomes = await asyncio.gather(*(run(i) for i in range(len(plan.steps))))
        for outcome in outcomes:
            report.bytes_transferred += outcome.bytes_transferred
            report.partitions_committed += len(outcome.committed)
            if not outcome.ok:
                report.failed_steps += 1
                report.failures.append(outcome.to_json())
        committed = committed_index(
            await asyncio.to_thread(self.catalog.sealed_manifests, self.tier)
        )
        report.lag = self._publish(compute_lag(manifests, committed, self.clock.now()))

    def forget_metrics(self) -> None:
        """Drop this link's lag series (the link is gone after a topology change)."""
        labels = (self.tier, self.region, self.source)
        for gauge in (
            self.metrics.replication_lag_seconds,
            self.metrics.replication_pending_bytes,
            self.metrics.replication_pending_partitions,
        ):
            with contextlib.suppress(KeyError):
                gauge.remove(*labels)

    def _publish(self, lag: LagReport) -> LagReport:
        labels = {"tier": self.tier, "region": self.region, "source": self.source}
        self.metrics.replication_lag_seconds.labels(**labels).set(lag.lag_seconds)
        self.metrics.replication_pending_bytes.labels(**labels).set(lag.pending_bytes)
        self.metrics.replication_pending_partitions.labels(**labels).set(lag.pending_partitions)
        self.lag = lag
        return lag

    def status(self) -> dict[str, Any]:
        lag = (
            self.lag.to_json()
            if self.lag is not None
            else {
                "lag_seconds": None,
                "pending_partitions": None,
                "pending_bytes": None,
                "oldest_pending": None,
                "oldest_pending_sealed_at": None,
            }
        )
        return {
            **lag,
            "lag_slo_seconds": self.rule.lag_slo,
            "within_slo": (self.lag is not None and self.lag.lag_seconds <= self.rule.lag_slo),
            "peer_healthy": self.peer_healthy,
            "last_success": format_rfc3339(self.last_success) if self.last_success else None,
            "last_error": self.last_error,
            "last_error_at": format_rfc3339(self.last_error_at) if self.last_error_at else None,
            "last_pass": self.last_pass.to_json() if self.last_pass else None,
        }


def _name(validator: object) -> str:
    return str(getattr(validator, "__name__", type(validator).__name__))
