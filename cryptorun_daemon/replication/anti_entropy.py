"""Anti-entropy: find what the change feed missed by comparing digests top-down.

Both sides keep, per tier and day, a count and an XOR-folded digest of their
committed ``(partition, content hash)`` pairs (the change feed's index). The
comparison asks the source for its day digests (one request, O(days)),
compares them with the local ones, and only for a differing day asks for its
hour digests, and only for a differing hour for that hour's manifests. A
year with ``d`` differing partitions costs O(days + d x hours-per-day), not
O(partitions).

What is compared is the replica's *index*; a file deleted by hand is seen by
the scrub (:mod:`cryptorun_daemon.storage.scrub`), which makes the index say
so. Days or partitions only this region holds are left alone (a replica never
deletes); they keep their day digest different, which costs one more request
per such day and pass, and are reported in ``extra_days``.

Repairs run while the comparison goes on, in bounded batches gathered across
hours (:data:`REPAIR_BATCH` partitions, :data:`REPAIRS_IN_FLIGHT` batches at
once), so a large repair keeps the copier's slots full.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Final, Literal

from cryptorun_daemon.config import Tier
from cryptorun_daemon.replication.transport_http import HttpPeer
from cryptorun_daemon.storage.change_feed import ChangeFeed
from cryptorun_daemon.storage.manifest import Manifest

#: What a comparison found: this region lacks the partition, or holds other content.
RepairReason = Literal["missing", "content"]


@dataclass(frozen=True)
class Difference:
    manifest: Manifest
    reason: RepairReason


@dataclass
class Comparison:
    """What one top-down comparison found, and the source feed head it started from."""

    feed_id: str
    head: int
    epoch: int
    days: int = 0
    differing_days: int = 0
    differing_hours: int = 0
    extra_days: int = 0
    differences: int = 0


#: Differences handed to ``repair`` at once, gathered across hours (and days): a
#: fresh replica's hours of three partitions each would otherwise be copied three
#: at a time. Also the bound on manifests held per batch.
REPAIR_BATCH: Final = 256
#: Repair batches running while the comparison goes on (at most this many
#: batches of manifests in memory, plus the one being gathered).
REPAIRS_IN_FLIGHT: Final = 2


async def compare(
    peer: HttpPeer,
    feed: ChangeFeed,
    tier: Tier,
    repair: Callable[[list[Difference]], Coroutine[Any, Any, None]],
    admit: Callable[[int], bool] = lambda _epoch: True,
    *,
    batch_size: int = REPAIR_BATCH,
) -> Comparison:
    """Compare the source's digests of ``tier`` with this root's, top-down.

    Differences are gathered across differing hours (cold: days) into batches
    of up to ``batch_size`` partitions; each full batch is handed to
    ``repair`` as a task while the comparison goes on, at most
    :data:`REPAIRS_IN_FLIGHT` at once, so the copier sees many partitions in
    flight (its own slots bound how many are copied at once) and memory holds
    a bounded number of manifests however much differs (a fresh replica of a
    year's history included). ``admit(epoch)`` sees the source's epoch first:
    when it says no (a fenced source), nothing is compared or repaired.

    Error handling: :class:`~cryptorun_daemon.errors.ReplicationError` from the
    peer propagates (the pass records it) after the repairs running are
    cancelled and awaited; local SQLite errors propagate as
    :class:`~cryptorun_daemon.errors.StorageError`. An error raised by
    ``repair`` propagates the same way.
    Resource handling: every repair task is awaited (or cancelled and
    awaited) before this returns or raises.
    """
    top = await peer.digest_days(tier)
    local_days = await asyncio.to_thread(feed.day_digests, tier)
    found = Comparison(feed_id=top.feed_id, head=top.head, epoch=top.epoch, days=len(top.days))
    if not admit(top.epoch):
        return found
    found.extra_days = len(local_days.keys() - top.days.keys())
    pending: list[Difference] = []
    running: list[asyncio.Task[None]] = []

    async def hand_over() -> None:
        nonlocal pending
        while len(running) >= REPAIRS_IN_FLIGHT:
            await running.pop(0)
        batch, pending = pending, []
        running.append(asyncio.create_task(repair(batch)))

    try:
        for day, digest in sorted(top.days.items()):
            if local_days.get(day) == digest:
                continue
            found.differing_days += 1
            source_hours = await peer.digest_hours(tier, day)
            local_hours = await asyncio.to_thread(feed.hour_digests, tier, day)
            for hour, hour_digest in sorted(source_hours.items()):
                if local_hours.get(hour) == hour_digest:
                    continue
                found.differing_hours += 1
                manifests = await peer.digest_partitions(tier, day, hour)
                held = await asyncio.to_thread(feed.lookup, tier, (m.partition for m in manifests))
                for manifest in manifests:
                    mine = held.get(manifest.partition)
                    if mine is None:
                        pending.append(Difference(manifest, "missing"))
                    elif mine.content_hash != manifest.content_hash:
                        pending.append(Difference(manifest, "content"))
                    else:
                        continue
                    found.differences += 1
                if len(pending) >= batch_size:
                    await hand_over()
        if pending:
            await hand_over()
        while running:
            await running.pop(0)
    finally:
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
    return found
