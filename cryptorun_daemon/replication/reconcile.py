"""Rejoin reconciliation: after a failover, nothing the old primary legitimately wrote is lost,
and nothing it wrote after losing primacy is applied.

Two halves, both driven by the persistent fence's epoch history
(:mod:`cryptorun_daemon.storage.write_fence`):

- **On the new primary** a :class:`ReconcileLink` per other participant of
  the tier lists, with ``GET /v1/partitions?tier=T&reconcile_epoch=E``
  (``E`` = current epoch − 1), the partitions that peer sealed legitimately
  under epochs ``<= E`` — by that epoch's primary, before the promotion that
  ended it. Those the primary lacks (or holds an older-epoch version of) are
  **deltas**: pulled through the normal executor (verified, validated by the
  step validators, committed) with file requests that carry the same
  ``reconcile_epoch``, which is the only way past the peer's serve fence.
  Counted as ``cryptorun_reconciled_partitions_total{tier,action="pulled"}``.
- **On a region that is not primary** (typically the returning old primary)
  :func:`set_aside_divergent` scans its own sealed partitions whenever the
  tier state changes: every partition whose manifest the fence proves
  illegitimate — an older epoch sealed at or after that epoch's end, or
  stamped by a region that was not primary at that epoch — is **divergent**
  and moved whole to ``{root}/{tier}/_divergent/epoch=E/<partition path>``
  (never deleted; ``action="divergent"``). Normal replication then brings the
  primary's copy where the primary has one.

What happened is kept per tier in :class:`ReconcileRecord` (the
``reconciliation`` block of ``/v1/status``) and logged partition by partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import structlog

from cryptorun_daemon.config import Rule, Tier
from cryptorun_daemon.errors import ReplicationError, StorageError
from cryptorun_daemon.metrics import Metrics
from cryptorun_daemon.replication.executor import WarmColdExecutor
from cryptorun_daemon.replication.link import BEGINNING_OF_TIME, OPEN_END, PassReport
from cryptorun_daemon.replication.planner import (
    Committed,
    committed_index,
    listed,
    plan_replication,
)
from cryptorun_daemon.replication.rules import TimeRange
from cryptorun_daemon.replication.transport_http import FileStream, HttpPeer
from cryptorun_daemon.runtime.clock import Clock
from cryptorun_daemon.runtime.failpoints import failpoint
from cryptorun_daemon.storage.atomic import atomic_write_bytes
from cryptorun_daemon.storage.catalog import Catalog
from cryptorun_daemon.storage.change_feed import ChangeFeed
from cryptorun_daemon.storage.manifest import Manifest, read_manifest
from cryptorun_daemon.storage.write_fence import Fence, move_divergent, read_fence
from cryptorun_daemon.timefmt import format_rfc3339, parse_rfc3339

log = structlog.get_logger("cryptorun.replication.reconcile")

PATHS_KEPT: Final = 50  # most recent partitions listed per action in status


@dataclass
class ReconcileRecord:
    """What reconciliation did for one tier, for ``/v1/status`` (most recent paths first)."""

    tier: Tier
    last_run: datetime | None = None
    epoch: int | None = None
    pulled: int = 0
    divergent: int = 0
    pulled_paths: list[str] = field(default_factory=list)
    divergent_paths: list[dict[str, Any]] = field(default_factory=list)
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    walk: DivergenceWalk | None = None

    def note_pulled(self, source: str, paths: list[str]) -> None:
        self.pulled += len(paths)
        self.pulled_paths = ([f"{p} (from {source})" for p in reversed(paths)] + self.pulled_paths)[
            :PATHS_KEPT
        ]

    def note_divergent(self, moved: list[dict[str, Any]]) -> None:
        self.divergent += len(moved)
        self.divergent_paths = (list(reversed(moved)) + self.divergent_paths)[:PATHS_KEPT]

    def to_json(self) -> dict[str, Any]:
        return {
            "last_run": format_rfc3339(self.last_run) if self.last_run else None,
            "epoch": self.epoch,
            "pulled": self.pulled,
            "divergent": self.divergent,
            "paths": {"pulled": list(self.pulled_paths), "divergent": list(self.divergent_paths)},
            "sources": dict(self.sources),
            "divergence_check": self.walk.to_json() if self.walk is not None else None,
        }


@dataclass
class DivergenceWalk:
    """Progress of one :func:`set_aside_divergent` call, for ``/v1/status``.

    The walk runs in a worker thread while the event loop reads these fields:
    each is a single attribute store (atomic under the GIL), and ``state``
    moves only forward: ``running`` → ``done`` (or ``failed``).
    """

    started: float = field(default_factory=time.monotonic)
    state: str = "running"
    #: Sealed manifests looked at so far; stays 0 when the fence did not change.
    walked: int = 0
    moved: int = 0
    #: False when the fence was the one already judged (one file read, no walk).
    walking: bool = False
    #: Set by the owner to end the walk early (the daemon is stopping): the walk
    #: stops before its next manifest and is not remembered as complete.
    stop_requested: bool = False
    seconds: float | None = None
    error: str | None = None

    def finish(self, error: str | None = None) -> None:
        self.seconds = time.monotonic() - self.started
        self.error = error
        self.state = "failed" if error is not None else "done"

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "walked": self.walked,
            "moved": self.moved,
            "walking": self.walking,
            "seconds": round(
                self.seconds if self.seconds is not None else time.monotonic() - self.started, 3
            ),
            # Not "error": an admin document starting with "error" is an API error.
            "last_error": self.error,
        }


def set_aside_divergent(
    root: Path, tier: Tier, catalog: Catalog, progress: DivergenceWalk | None = None
) -> list[dict[str, Any]]:
    """Move every sealed partition of ``tier`` that the fence proves divergent (blocking).

    Returns one ``{"partition", "epoch", "writer_region", "sealed_at",
    "moved_to"}`` per partition moved. Without a fence nothing is judged.

    Only a fence change can make a held partition divergent (commits and
    seals are judged against the fence as they happen), so a completed walk
    is remembered with the fence it judged against
    (``{root}/_state/divergent_checked/{tier}.json``) and a later call with
    the same fence — every restart, every topology change that did not move
    an epoch — costs one file read. A walk streams the manifests' raw bytes
    (:meth:`Catalog.iter_sealed`) and fully parses only the ones judged
    divergent, so its memory is flat whatever the history. ``progress`` counts
    what the walk has looked at and moved as it goes (the daemon shows it in
    ``/v1/status`` while the walk runs in the background); setting its
    ``stop_requested`` ends the walk before the next manifest, unremembered.

    Error handling: a partition that cannot be moved is logged and left in
    place (it is retried at the next state change: the walk is then not
    remembered); ``OSError`` never escapes.
    """
    fence = read_fence(root, tier)
    if fence is None:
        return []
    marker = root / "_state" / "divergent_checked" / f"{tier}.json"
    judged = json.dumps(
        {k: v for k, v in fence.to_json().items() if k != "updated_at"}, sort_keys=True
    ).encode()
    try:
        if marker.read_bytes() == judged:
            return []
    except OSError:
        pass
    progress = progress if progress is not None else DivergenceWalk()
    progress.walking = True
    moved: list[dict[str, Any]] = []
    complete = True
    for manifest in _divergent_candidates(catalog, tier, fence, progress):
        directory = root / tier / manifest.partition
        try:
            target = move_divergent(root, directory, manifest)
        except OSError as exc:
            complete = False
            log.error(
                "divergent partition not moved",
                tier=tier,
                partition=manifest.partition,
                error=str(exc),
            )
            continue
        ended = fence.ended_at(manifest.epoch)
        log.warning(
            "divergent partition moved aside",
            tier=tier,
            partition=manifest.partition,
            epoch=manifest.epoch,
            writer=manifest.writer_region,
            sealed_at=format_rfc3339(manifest.sealed_at),
            epoch_ended=format_rfc3339(ended) if ended else None,
            to=str(target),
        )
        moved.append(
            {
                "partition": manifest.partition,
                "epoch": manifest.epoch,
                "writer_region": manifest.writer_region,
                "sealed_at": format_rfc3339(manifest.sealed_at),
                "moved_to": str(target.relative_to(root)),
            }
        )
        progress.moved = len(moved)
    if progress.stop_requested:
        complete = False  # ended early: the next start walks again
    if complete:
        try:
            marker.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(marker, judged)
        except OSError as exc:  # only costs a walk at the next change
            log.warning("divergence check not remembered", tier=tier, error=str(exc))
    return moved


def _divergent_candidates(
    catalog: Catalog, tier: Tier, fence: Fence, progress: DivergenceWalk
) -> Iterator[Manifest]:
    """Sealed manifests of ``tier`` the fence judges divergent, streamed (blocking).

    Epoch, writer and seal time are read from the raw bytes; only a
    manifest judged divergent is parsed and checked in full (and judged again).
    """
    for key, directory, raw in catalog.iter_sealed(tier):
        if progress.stop_requested:
            return  # the caller sees the flag and does not remember the walk
        progress.walked += 1
        failpoint("replica.divergence_walk")
        try:
            doc = json.loads(raw)
            verdict = fence.judge(
                int(doc["epoch"]), str(doc["writer_region"]), parse_rfc3339(doc["sealed_at"])
            )
        except (ValueError, KeyError, TypeError):
            continue  # unreadable: not replicable, nothing to judge (the scrub reports it)
        if verdict != "divergent":
            continue
        try:
            manifest = read_manifest(directory)
        except StorageError:
            continue
        if manifest.key == key and fence.classify(manifest) == "divergent":
            yield manifest


class ReconcileSource:
    """The executor's file source for reconciliation: the peer's files at ``reconcile_epoch``."""

    def __init__(self, peer: HttpPeer, epoch: int) -> None:
        self.peer = peer
        self.region = peer.region
        self.epoch = epoch

    def open_file(
        self, tier: Tier, partition: str, name: str, *, offset: int, expected_hash: str
    ) -> contextlib.AbstractAsyncContextManager[FileStream]:
        return self.peer.open_file(
            tier,
            partition,
            name,
            offset=offset,
            expected_hash=expected_hash,
            reconcile_epoch=self.epoch,
        )


class ReconcileLink:
    """On the primary: pull one peer's legitimate old-epoch partitions that are missing here.

    Error handling: like :class:`~cryptorun_daemon.replication.link.ReplicationLink`,
    failures end up in the returned report (a peer that is down, or has not
    learned the new epoch yet, just makes the pass end with a reason); the
    scheduler tries again next interval.
    """

    kind = "reconcile"

    def __init__(
        self,
        *,
        rule: Rule,
        region: str,
        peer: HttpPeer,
        catalog: Catalog,
        make_executor: Callable[[ReconcileSource], WarmColdExecutor],
        metrics: Metrics,
        clock: Clock,
        epoch_provider: Callable[[Tier], int],
        record: ReconcileRecord,
        step_max_partitions: int,
        bucket_index: ChangeFeed | None = None,
    ) -> None:
        """``bucket_index``: for a tier this region holds only in its bucket, the
        bucket's index; what it lists counts as held here, beside the disk's
        partitions, so a partition already in the bucket is not pulled again."""
        self.rule = rule
        self.tier = rule.tier
        self.source = peer.region
        self.region = region
        self.peer = peer
        self.catalog = catalog
        self._make_executor = make_executor
        self.metrics = metrics
        self.clock = clock
        self._epoch = epoch_provider
        self.record = record
        self._step_max = step_max_partitions
        self._bucket_index = bucket_index
        self.last_pass: PassReport | None = None
        self._executor: WarmColdExecutor | None = None
        self._executor_epoch: int | None = None

    def _held_in_bucket(self) -> dict[str, Committed]:
        """Every partition the bucket index lists for this tier (blocking: SQLite)."""
        assert self._bucket_index is not None
        return {
            held.partition: Committed(held.content_hash, held.epoch)
            for day in list(self._bucket_index.held_days(self.tier))
            for held in self._bucket_index.held(self.tier, day)
        }

    async def run_pass(self) -> PassReport:
        started = time.monotonic()
        report = PassReport(self.tier, self.source, self.clock.now())
        try:
            await self._pass(report)
        except ReplicationError as exc:
            report.reason = str(exc)
        report.seconds = time.monotonic() - started
        self.last_pass = report
        self.record.last_run = report.started_at
        self.record.sources[self.source] = {
            "last_pass": format_rfc3339(report.started_at),
            "ok": report.ok,
            "reason": report.reason,
            "pulled": report.partitions_committed,
        }
        return report

    async def _pass(self, report: PassReport) -> None:
        current = self._epoch(self.tier)
        self.record.epoch = current
        if current <= 1:
            return  # no epoch has ended: nothing can be missing from an old primary
        old_epoch = current - 1
        listing = await self.peer.list_partitions(self.tier, reconcile_epoch=old_epoch)
        now = self.clock.now()
        committed = committed_index(
            await asyncio.to_thread(self.catalog.sealed_manifests, self.tier)
        )
        if self._bucket_index is not None:
            committed = {**await asyncio.to_thread(self._held_in_bucket), **committed}
        # One executor per old epoch: it remembers content that validation refused,
        # so a rejected delta is not fetched and quarantined again on every pass.
        if self._executor is None or self._executor_epoch != old_epoch:
            self._executor = self._make_executor(ReconcileSource(self.peer, old_epoch))
            self._executor_epoch = old_epoch
        executor = self._executor
        offered = await asyncio.to_thread(executor.accepted, listing.manifests)
        plan = plan_replication(
            tier=self.tier,
            from_region=self.source,
            to_region=self.region,
            window=TimeRange(BEGINNING_OF_TIME, now + OPEN_END),
            source=listed(offered),
            destination=committed,
            now=now,
            step_max_partitions=self._step_max,
            validators=[str(getattr(v, "__name__", type(v).__name__)) for v in executor.validators],
        )
        report.steps = len(plan.steps)
        by_path = {m.partition: m for m in offered}
        pulled: list[str] = []
        for step in plan.steps:
            outcome = await executor.run_step(step, by_path)
            report.bytes_transferred += outcome.bytes_transferred
            report.partitions_committed += len(outcome.committed)
            pulled.extend(outcome.committed)
            if not outcome.ok:
                report.failed_steps += 1
                report.failures.append(outcome.to_json())
        if pulled:
            self.metrics.reconciled_partitions_total.labels(tier=self.tier, action="pulled").inc(
                len(pulled)
            )
            self.record.note_pulled(self.source, pulled)
            for path in pulled:
                log.warning(
                    "reconciled partition pulled",
                    tier=self.tier,
                    partition=path,
                    source=self.source,
                    epoch=by_path[path].epoch,
                )

    def status(self) -> dict[str, Any]:
        return {"last_pass": self.last_pass.to_json() if self.last_pass else None}
