"""One replication link: pull ``tier`` from one source region into this region.

A pass is: probe the peer → follow its change feed from the durable
position (or, when there is none, it is lost, or a check is asked for or due,
compare digests top-down and repair) → plan and copy what changed → publish
lag. An unhealthy or fenced peer ends the pass early with a recorded reason
and no steps (the scheduler simply tries again next interval). Nothing in a
steady-state pass grows with the history of the tier.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import structlog

from cryptorun_daemon.config import Rule, Tier
from cryptorun_daemon.errors import ReplicationError, ResyncNeededError
from cryptorun_daemon.metrics import Metrics
from cryptorun_daemon.replication.anti_entropy import Difference, compare
from cryptorun_daemon.replication.executor import StepOutcome, WarmColdExecutor
from cryptorun_daemon.replication.feed_position import FeedPosition, PositionStore
from cryptorun_daemon.replication.lag import IN_SYNC, LagReport, compute_lag
from cryptorun_daemon.replication.planner import Committed, listed, plan_replication
from cryptorun_daemon.replication.rules import TimeRange
from cryptorun_daemon.replication.transport_http import HttpPeer
from cryptorun_daemon.runtime.clock import Clock
from cryptorun_daemon.storage.catalog import Catalog
from cryptorun_daemon.storage.change_feed import ChangeFeed
from cryptorun_daemon.storage.manifest import Manifest
from cryptorun_daemon.storage.scrub import scrub_tier
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
    feed_changes: int = 0
    feed_position: int | None = None
    resync: bool = False
    repaired: int = 0
    anti_entropy: dict[str, Any] | None = None
    scrub: dict[str, Any] | None = None

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
            "feed_changes": self.feed_changes,
            "feed_position": self.feed_position,
            "resync": self.resync,
            "repaired": self.repaired,
            "anti_entropy": self.anti_entropy,
            "scrub": self.scrub,
        }


#: What a pass checks: ``feed`` follows the change feed only (the scheduled
#: steady state); ``digest`` also compares digests with the source (anti-entropy);
#: ``full`` first scrubs this root's disk against its index, then as ``digest``.
Check = Literal["feed", "digest", "full"]
CHECKS: tuple[Check, ...] = ("feed", "digest", "full")

# One page of the source's feed per request, and at most this many pages per
# pass, so one pass stays bounded however far behind the replica is.
PAGE = 500
MAX_PAGES_PER_PASS = 20


class ReplicationLink:
    """State and pass logic for one (tier, source → this region) pair.

    Steady state follows the source's change feed from the position kept in
    ``_state/feed_position/`` (:mod:`~cryptorun_daemon.replication.feed_position`):
    a pass costs one request and one indexed query at the source, whatever the
    history. Anti-entropy (:mod:`~cryptorun_daemon.replication.anti_entropy`)
    runs when there is no usable position (first start, another feed
    incarnation after a failover or restore, a position older than the
    source's retention: "resync needed"), every ``anti_entropy_interval``,
    and when asked (``check``); after it, the feed is followed from the head
    the source gave *before* computing its digests, so nothing falls between.

    Error handling: peer, listing and step failures are recorded in
    :attr:`last_error` and the report; nothing but programming errors
    escapes :meth:`run_pass`. Partitions that fail are kept in a retry set
    (bounded by the number of failing partitions) and tried again every pass;
    the durable position records that a repair is due, so a restart runs
    anti-entropy before following the feed.
    """

    def __init__(
        self,
        *,
        rule: Rule,
        region: str,
        peer: HttpPeer,
        catalog: Catalog,
        feed: ChangeFeed,
        executor: WarmColdExecutor,
        metrics: Metrics,
        clock: Clock,
        epoch_provider: Callable[[Tier], int],
        step_max_partitions: int,
        max_concurrency: int,
        anti_entropy_interval: float = 600.0,
        index_ready: asyncio.Event | None = None,
        divergence_checked: asyncio.Event | None = None,
        peer_reporter: Callable[[str, bool, str | None], None] | None = None,
        feed_indexes_disk: bool = True,
    ) -> None:
        self.rule = rule
        self.tier = rule.tier
        self.source = peer.region
        self.region = region
        self.peer = peer
        self.catalog = catalog
        self.feed = feed
        self.executor = executor
        self.metrics = metrics
        self.clock = clock
        self._epoch = epoch_provider
        self._step_max = step_max_partitions
        self._step_slots = asyncio.Semaphore(max_concurrency)
        self._anti_entropy_interval = anti_entropy_interval
        # Set once this root's first scrub has brought the index in line with
        # the disk: comparing digests before would "repair" what is already here.
        self._index_ready = index_ready
        # Set once this region's divergence walk has run (in the background after
        # start): nothing is pulled before, so a divergent copy the walk would set
        # aside is never first replaced by a pull.
        self._divergence_checked = divergence_checked
        self.waiting_for: str | None = None
        self._positions = PositionStore(catalog.root, self.tier, self.source)
        # None until loaded from disk on the first pass; then what is durable.
        self._position: FeedPosition | None = None
        self._loaded = False
        # Manifests whose copy failed (or that are not replicable yet), by path.
        self._retry: dict[str, Manifest] = {}
        self._last_anti_entropy: float | None = None
        self.resyncs = 0
        self.last_anti_entropy: dict[str, Any] | None = None
        self.lag: LagReport | None = None
        self.last_success: datetime | None = None
        self.last_error: str | None = None
        self.last_error_at: datetime | None = None
        self.last_pass: PassReport | None = None
        self.peer_healthy: bool | None = None
        # Peer health (and cryptorun_peer_up) is owned by the failover component;
        # a pull is one more observation of the peer, reported there.
        self._report_peer = peer_reporter
        # False when ``feed`` indexes a bucket (replication/bucket_executor.py): a
        # "full" check then has no disk of this tier to scrub against it.
        self._feed_indexes_disk = feed_indexes_disk

    async def run_pass(self, check: Check = "feed") -> PassReport:
        started = time.monotonic()
        report = PassReport(self.tier, self.source, self.clock.now())
        try:
            await self._pass(report, check)
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

    async def _pass(self, report: PassReport, check: Check) -> None:
        if self._divergence_checked is not None and not self._divergence_checked.is_set():
            self.waiting_for = "divergence_check"
            try:
                await self._divergence_checked.wait()
            finally:
                self.waiting_for = None
        health = await self.peer.probe()
        self.peer_healthy = health.healthy
        if self._report_peer is not None:
            self._report_peer(self.source, health.healthy, health.reason)
        if not health.healthy:
            report.reason = health.reason or f"peer {self.source} unhealthy"
            report.lag = self.lag or IN_SYNC
            return
        if not self._loaded:
            self._position = await asyncio.to_thread(self._positions.load)
            self._loaded = True
        if check == "full" and self._feed_indexes_disk:
            found = await asyncio.to_thread(scrub_tier, self.catalog, self.feed, self.tier)
            report.scrub = {"partitions": found.partitions, "lost": found.lost}
        position = self._position
        due = (
            self._last_anti_entropy is not None
            and time.monotonic() - self._last_anti_entropy >= self._anti_entropy_interval
        )
        needs_repair = check != "feed" or position is None or position.repair_due or due
        if not needs_repair:
            try:
                if not await self._follow(report):
                    return
            except ResyncNeededError as exc:
                self.resyncs += 1
                report.resync = True
                log.warning(
                    "change feed position lost; repairing by digest",
                    tier=self.tier,
                    source=self.source,
                    detail=str(exc),
                )
                needs_repair = True
        if needs_repair:
            if not await self._anti_entropy(report, check):
                return
            await self._follow(report)
        await self._retry_pending(report)
        report.lag = self._publish(compute_lag(self._retry.values(), {}, self.clock.now()))

    def _fenced(self, report: PassReport, epoch: int) -> bool:
        current_epoch = self._epoch(self.tier)
        if epoch < current_epoch:
            report.reason = (
                f"{self.source} serves {self.tier} at epoch {epoch}, older than the "
                f"current epoch {current_epoch}: it is fenced, nothing is pulled from it"
            )
            return True
        return False

    async def _follow(self, report: PassReport) -> bool:
        """Apply the source's feed from the durable position; False when the source is fenced.

        Error handling: :class:`ResyncNeededError` when the source cannot
        answer from the position (the caller repairs by digest).
        """
        position = self._position
        if position is None:
            raise ResyncNeededError("no feed position yet")
        for _ in range(MAX_PAGES_PER_PASS):
            batch = await self.peer.changes(
                self.tier, after=position.position, limit=PAGE, feed_id=position.feed_id
            )
            if self._fenced(report, batch.epoch):
                return False
            latest: dict[str, Manifest] = {}
            for _position, manifest in batch.sealed:
                latest[manifest.partition] = manifest
            report.feed_changes += len(batch.positions)
            await self._apply(list(latest.values()), report)
            moved = FeedPosition(batch.feed_id, batch.next_after, repair_due=bool(self._retry))
            if moved != position:
                await asyncio.to_thread(self._positions.save, moved)
                self._position = position = moved
            if len(batch.positions) < PAGE:
                break
        report.feed_position = position.position
        return True

    async def _anti_entropy(self, report: PassReport, check: Check) -> bool:
        """Compare digests with the source and repair the differences; False when fenced."""
        if self._index_ready is not None:
            await self._index_ready.wait()
        started = time.monotonic()
        # What a repair is counted as: the difference found, unless the whole
        # comparison ran because there was no usable feed position.
        why = "initial" if self._position is None else "resync" if report.resync else None

        async def repair(batch: list[Difference]) -> None:
            reasons = {d.manifest.partition: why or d.reason for d in batch}
            committed = await self._apply([d.manifest for d in batch], report)
            for path in committed:
                reason = reasons.get(path)
                if reason is not None:
                    report.repaired += 1
                    self.metrics.replication_repairs_total.labels(
                        tier=self.tier, reason=reason
                    ).inc()

        # The source's epoch is checked before anything it lists is applied.
        found = await compare(
            self.peer,
            self.feed,
            self.tier,
            repair,
            admit=lambda epoch: not self._fenced(report, epoch),
        )
        if report.reason is not None:
            return False
        self._last_anti_entropy = time.monotonic()
        self.last_anti_entropy = {
            "at": format_rfc3339(self.clock.now()),
            "check": check,
            "resync": report.resync,
            "seconds": round(time.monotonic() - started, 3),
            "days": found.days,
            "differing_days": found.differing_days,
            "differing_hours": found.differing_hours,
            "extra_days": found.extra_days,
            "differences": found.differences,
            "repaired": report.repaired,
        }
        report.anti_entropy = self.last_anti_entropy
        # Changes after the source's head are in its feed past it: follow from there.
        moved = FeedPosition(found.feed_id, found.head, repair_due=bool(self._retry))
        await asyncio.to_thread(self._positions.save, moved)
        self._position = moved
        return True

    async def _retry_pending(self, report: PassReport) -> None:
        if self._retry:
            await self._apply(list(self._retry.values()), report)

    async def _apply(self, manifests: list[Manifest], report: PassReport) -> set[str]:
        """Plan and copy ``manifests``; return the paths committed (or already held).

        Failed and not-yet-replicable partitions go to the retry set; the
        others leave it.
        """
        if not manifests:
            return set()
        # Fencing at the replica: manifests this root's fence proves were written
        # by a fenced writer are quarantined as "fenced", never planned or awaited.
        accepted = await asyncio.to_thread(self.executor.accepted, manifests)
        refused = {m.partition for m in manifests} - {m.partition for m in accepted}
        for path in refused:
            self._retry.pop(path, None)
        held = await asyncio.to_thread(self.feed.lookup, self.tier, (m.partition for m in accepted))
        now = self.clock.now()
        # Up to a feed page (500) or a repair batch of partitions: planned in a
        # worker thread, so a large catch-up never holds the event loop.
        plan = await asyncio.to_thread(
            functools.partial(
                plan_replication,
                tier=self.tier,
                from_region=self.source,
                to_region=self.region,
                # A standing link replicates everything sealed so far: its window is open
                # at the far end (the current day's partitions lie inside it); "nothing in
                # the future" is the planner's own check against ``now``.
                window=TimeRange(BEGINNING_OF_TIME, now + OPEN_END),
                source=listed(accepted),
                destination={p: Committed(h.content_hash, h.epoch) for p, h in held.items()},
                now=now,
                step_max_partitions=self._step_max,
                validators=[_name(v) for v in self.executor.validators],
            )
        )
        by_path = {m.partition: m for m in accepted}
        done = {p for p in by_path if p in held and held[p].content_hash == by_path[p].content_hash}
        for skipped in plan.skipped:
            if skipped.why == "future":
                self._retry[skipped.path] = by_path[skipped.path]  # not replicable yet
            else:
                self._retry.pop(skipped.path, None)
        for path in done:
            self._retry.pop(path, None)
        report.steps += len(plan.steps)
        if not plan.steps:
            return done
        self.metrics.replication_plan_steps_total.labels(
            tier=self.tier, **{"from": self.source, "to": self.region}
        ).inc(len(plan.steps))

        async def run(step_index: int) -> StepOutcome:
            async with self._step_slots:
                return await self.executor.run_step(plan.steps[step_index], by_path)

        outcomes = await asyncio.gather(*(run(i) for i in range(len(plan.steps))))
        for outcome in outcomes:
            report.bytes_transferred += outcome.bytes_transferred
            report.partitions_committed += len(outcome.committed)
            done.update(outcome.committed)
            for planned in outcome.step.partitions:
                if planned.path in outcome.committed:
                    self._retry.pop(planned.path, None)
                else:
                    self._retry[planned.path] = by_path[planned.path]
            if not outcome.ok:
                report.failed_steps += 1
                report.failures.append(outcome.to_json())
        return done

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
            # "divergence_check" while the first pass waits for this region's walk.
            "waiting_for": self.waiting_for,
            "feed": {
                "feed_id": self._position.feed_id if self._position else None,
                "position": self._position.position if self._position else None,
                "resyncs": self.resyncs,
                "retrying": len(self._retry),
                "last_anti_entropy": self.last_anti_entropy,
            },
        }


def _name(validator: object) -> str:
    return str(getattr(validator, "__name__", type(validator).__name__))
