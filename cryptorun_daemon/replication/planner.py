"""Decide what to copy: the minimal, deterministic, point-in-time-safe plan.

Inputs are plain data (source partitions, what the destination holds, the
time, the peer's health) so the planner is a pure function: the same inputs
give the same plan, and tests need no disk, network or clock.

The point-in-time (PIT) rule: a window ``[start, end)`` selects only sealed
partitions whose whole span lies inside it. A partition crossing ``end`` (or
``start``), one not sealed yet, and one whose span ends after ``now`` are left
out and reported in ``Plan.skipped``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import groupby
from typing import Protocol

from cryptorun_daemon.config import Tier
from cryptorun_daemon.replication.rules import (
    Plan,
    PlannedPartition,
    SkippedPartition,
    Step,
    TimeRange,
)
from cryptorun_daemon.storage.layout import PartitionKey
from cryptorun_daemon.storage.manifest import Manifest
from cryptorun_daemon.timefmt import format_rfc3339


class SourcePartition(Protocol):
    """What the planner needs from a source partition (a ``CatalogEntry`` fits)."""

    @property
    def key(self) -> PartitionKey: ...

    @property
    def sealed(self) -> bool: ...

    @property
    def manifest(self) -> Manifest | None: ...


@dataclass(frozen=True)
class ListedPartition:
    """A sealed partition as a peer lists it (peers only list sealed partitions)."""

    manifest: Manifest

    @property
    def key(self) -> PartitionKey:
        return self.manifest.key

    @property
    def sealed(self) -> bool:
        return True


def listed(manifests: Iterable[Manifest]) -> list[ListedPartition]:
    return [ListedPartition(m) for m in manifests]


@dataclass(frozen=True)
class Committed:
    """What the destination holds for one partition: its committed content and epoch."""

    content_hash: str | None
    epoch: int


def committed_index(manifests: Iterable[Manifest]) -> dict[str, Committed]:
    """Destination state keyed by partition path, from its sealed manifests."""
    return {m.partition: Committed(m.content_hash, m.epoch) for m in manifests}


@dataclass(frozen=True)
class PeerHealth:
    healthy: bool
    reason: str | None = None


HEALTHY = PeerHealth(True)


def plan_replication(
    *,
    tier: Tier,
    from_region: str,
    to_region: str,
    window: TimeRange,
    source: Sequence[SourcePartition],
    destination: Mapping[str, Committed],
    now: datetime,
    peer: PeerHealth = HEALTHY,
    step_max_partitions: int = 24,
    validators: Sequence[str] = (),
) -> Plan:
    """Plan the copy of ``tier`` from ``from_region`` to ``to_region`` over ``window``.

    Steps are incremental windows (one hour for hourly tiers, one day for
    cold), oldest first; a window holding more than ``step_max_partitions``
    partitions is split into several steps with the same window. A partition
    is copied when the destination lacks it or holds different content; a
    destination copy with a newer epoch than the source's is never replaced
    (a fenced former primary cannot overwrite its successor's data).
    """
    if step_max_partitions < 1:
        raise ValueError("step_max_partitions must be >= 1")
    if not peer.healthy:
        return Plan(tier, from_region, to_region, window, reason=peer.reason or "peer unhealthy")
    selected: list[tuple[PartitionKey, PlannedPartition]] = []
    skipped: list[SkippedPartition] = []
    in_sync = 0
    for part in sorted(source, key=lambda p: p.key):
        key = part.key
        if key.tier != tier or not window.overlaps(key.start, key.end):
            continue
        path = key.relpath
        if _data_end(part) > now:
            skipped.append(SkippedPartition(path, "future"))
            continue
        # Point-in-time: the partition's whole span must lie inside the window,
        # whatever its seal time says about where its data ends.
        if not window.contains_span(key.start, key.end):
            skipped.append(SkippedPartition(path, "crosses_window"))
            continue
        if not part.sealed:
            skipped.append(SkippedPartition(path, "unsealed"))
            continue
        manifest = part.manifest
        if manifest is None:
            skipped.append(SkippedPartition(path, "no_manifest"))
            continue
        held = destination.get(path)
        if held is not None and held.content_hash == manifest.content_hash:
            in_sync += 1
            continue
        if held is not None and held.epoch > manifest.epoch:
            skipped.append(SkippedPartition(path, "stale_epoch"))
            continue
        selected.append(
            (
                key,
                PlannedPartition(
                    path=path,
                    content_hash=manifest.content_hash,
                    files=len(manifest.files),
                    bytes=manifest.total_bytes,
                    sealed_at=format_rfc3339(manifest.sealed_at),
                    epoch=manifest.epoch,
                    action="copy" if held is None else "replace",
                ),
            )
        )
    steps: list[Step] = []
    # ``selected`` is sorted by key, so partitions of one window are adjacent.
    for step_window, members in groupby(selected, key=lambda item: _step_window(item[0])):
        batch = [planned for _, planned in members]
        for i in range(0, len(batch), step_max_partitions):
            steps.append(
                Step(
                    tier=tier,
                    from_region=from_region,
                    to_region=to_region,
                    window=step_window,
                    validators=tuple(validators),
                    partitions=tuple(batch[i : i + step_max_partitions]),
                )
            )
    return Plan(
        tier,
        from_region,
        to_region,
        window,
        steps=tuple(steps),
        in_sync=in_sync,
        skipped=tuple(skipped),
    )


def _data_end(part: SourcePartition) -> datetime:
    """Where a partition's data ends, for the "nothing in the future" check.

    Its span's end, or its seal time when that is earlier and inside the span:
    with ``hot.partition_length`` under an hour (the demo) the hot sealer seals
    an hour partition after every closed window and re-seals it as later windows
    add files, so such a partition holds nothing past its seal time and is
    replicable then (a re-seal changes its content hash and is copied as a
    ``replace``). A seal time before the span even starts is a skewed clock, not
    an early seal, and is ignored. Window containment always uses the full span.
    """
    if part.sealed and part.manifest is not None:
        sealed_at = part.manifest.sealed_at
        if part.key.start <= sealed_at < part.key.end:
            return sealed_at
    return part.key.end


def _step_window(key: PartitionKey) -> TimeRange:
    # A partition's own span is its step window: an hour for hot/warm, a day for cold.
    return TimeRange(key.start, key.end)
