"""Replication lag as S3 Replication Time Control defines it.

Lag = now − seal time (at the source) of the oldest sealed source partition
not yet committed at the destination; 0 when everything sealed is committed.
It grows steadily while one partition is stuck, so an alert on it catches a
single poisoned partition as well as a dead link. Pending bytes and
partitions say how much work remains.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from cryptorun_daemon.replication.planner import Committed
from cryptorun_daemon.storage.manifest import Manifest
from cryptorun_daemon.timefmt import format_rfc3339


@dataclass(frozen=True)
class LagReport:
    lag_seconds: float
    pending_partitions: int
    pending_bytes: int
    oldest_pending: str | None = None
    oldest_pending_sealed_at: datetime | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "lag_seconds": round(self.lag_seconds, 3),
            "pending_partitions": self.pending_partitions,
            "pending_bytes": self.pending_bytes,
            "oldest_pending": self.oldest_pending,
            "oldest_pending_sealed_at": (
                format_rfc3339(self.oldest_pending_sealed_at)
                if self.oldest_pending_sealed_at is not None
                else None
            ),
        }


IN_SYNC = LagReport(0.0, 0, 0)


def compute_lag(
    source: Iterable[Manifest], destination: Mapping[str, Committed], now: datetime
) -> LagReport:
    """Lag and pending work of ``destination`` relative to the sealed ``source``.

    A source partition counts as pending unless the destination holds the same
    content, or holds a newer epoch's version (which the planner never
    replaces, so waiting for it would report lag forever).
    """
    oldest: Manifest | None = None
    count = 0
    total = 0
    for manifest in source:
        held = destination.get(manifest.partition)
        if held is not None and (
            held.content_hash == manifest.content_hash or held.epoch > manifest.epoch
        ):
            continue
        count += 1
        total += manifest.total_bytes
        if oldest is None or (manifest.sealed_at, manifest.key) < (oldest.sealed_at, oldest.key):
            oldest = manifest
    if oldest is None:
        return IN_SYNC
    lag = max(0.0, (now - oldest.sealed_at).total_seconds())
    return LagReport(lag, count, total, f"{oldest.tier}/{oldest.partition}", oldest.sealed_at)
