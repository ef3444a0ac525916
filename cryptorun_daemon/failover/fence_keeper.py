"""The failover side of fencing: keep the storage fence current, and refuse to serve when fenced.

The rule itself lives with the data (:mod:`cryptorun_daemon.storage.write_fence`):
storage checks the persistent fence at every seal and every replicated
manifest. This module feeds it: :meth:`FenceKeeper.record` is called by the
failover component for every tier state it caches (snapshot, promotion,
adoption), before any listener runs, and writes it through
:func:`~cryptorun_daemon.storage.write_fence.advance_fence` — which only moves
forward. It also decides, for the partition server, whether this region may
serve a tier as a replication source (only the current primary may) and
counts refusals in ``cryptorun_fenced_total{tier,operation}``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Final

import structlog

from cryptorun_daemon.config import is_active_passive
from cryptorun_daemon.errors import StorageError
from cryptorun_daemon.failover.roles import TierState
from cryptorun_daemon.metrics import Metrics
from cryptorun_daemon.storage.write_fence import Fence, advance_fence

log = structlog.get_logger("cryptorun.failover.fence")

FENCE_OPERATIONS: Final = ("seal", "serve", "apply")

#: ``(status, error code, detail)`` when a request must be refused.
Refusal = tuple[int, str, str]


class FenceKeeper:
    """Writes tier states into the persistent fence and answers "may I serve this tier?".

    ``current(tier)`` and ``not_ready()`` come from the failover component's
    cache, so a region that has not yet compared epochs with its peers serves
    nothing (503) rather than serving on the strength of a stale local state.

    Error handling: a fence that cannot be written is logged and kept in
    :attr:`problems` (shown in status); the storage-level checks then still
    see the older fence, which refuses more, never less.
    Resource handling: one small atomic file write per new state (fsync: a few
    milliseconds on the event loop, on purpose: the fence must be durable
    before any component acts on the new epoch), under the tier's fence lock:
    it waits for a seal or commit that is between its last check and its
    rename (a few more fsyncs), never longer.
    """

    def __init__(
        self,
        *,
        root: Path,
        region: str,
        metrics: Metrics,
        current: Callable[[str], TierState | None],
        not_ready: Callable[[], list[str]],
    ) -> None:
        self.root = root
        self.region = region
        self.metrics = metrics
        self._current = current
        self._not_ready = not_ready
        self.fences: dict[str, Fence] = {}
        self.problems: dict[str, str] = {}

    def record(self, state: TierState) -> None:
        """Advance the persistent fence of ``state.tier`` to ``state`` (never backwards)."""
        transitions = [(t.epoch, t.at, t.promoted) for t in state.history]
        try:
            fence = advance_fence(
                self.root,
                state.tier,
                epoch=state.epoch,
                primary=state.primary,
                updated_at=state.updated_at,
                transitions=transitions,
            )
        except StorageError as exc:
            self.problems[state.tier] = str(exc)
            log.error("fence_not_written", tier=state.tier, epoch=state.epoch, error=str(exc))
            return
        self.problems.pop(state.tier, None)
        old = self.fences.get(state.tier)
        self.fences[state.tier] = fence
        if old is None or old.epoch != fence.epoch:
            log.info(
                "fence_advanced",
                tier=state.tier,
                epoch=fence.epoch,
                primary=fence.primary,
                fenced=fence.primary != self.region,
            )

    def count(self, tier: str, operation: str) -> None:
        """Count one refused ``operation`` (seal, serve, apply) on ``tier``."""
        self.metrics.fenced_total.labels(tier=tier, operation=operation).inc()

    def serve_refusal(self, tier: str, *, as_source: bool = True) -> Refusal | None:
        """``None`` when this region may answer ``tier`` partition requests, else why not.

        Hot is never fenced, nor a tier no active-passive rule manages (it has
        no primary). 503 while the failover state is not ready. When
        another region is the primary of the current epoch: 409 ``fenced``
        (counted, operation ``serve``) for every request that uses this region
        as a source (``as_source``: file downloads, ``purpose=source``
        listings). A plain listing (``as_source=False``) is refused the same
        way only by a region that *was* primary at an earlier epoch — the one
        whose data may hold writes made after it lost primacy; a region that
        never was primary just answers what it holds.
        """
        if not is_active_passive(tier):
            return None
        reasons = self._not_ready()
        if reasons:
            return 503, "not_ready", "; ".join(reasons)
        state = self._current(tier)
        if state is None or state.primary == self.region:
            return None  # no active-passive rule for this tier: nobody to fence
        demoted = any(t.promoted == self.region for t in state.history)
        if not as_source and not demoted:
            return None
        self.count(tier, "serve")
        return (
            409,
            "fenced",
            (
                f"{self.region} is fenced for {tier}: the primary at epoch {state.epoch} is "
                f"{state.primary}; replicate from it (this region's old-epoch partitions are "
                "served only with reconcile_epoch, what it holds with purpose=inventory)"
            ),
        )
