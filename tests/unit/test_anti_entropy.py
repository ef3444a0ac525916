"""Anti-entropy by digest against a real loopback feed server: repairs in gathered batches.

The source's change feed and digests are served by the daemon's own
``FeedServer`` handlers over real HTTP; the replica's index is an empty feed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

from cryptorun_daemon.replication.anti_entropy import REPAIRS_IN_FLIGHT, Difference, compare
from cryptorun_daemon.replication.feed_serving import FeedServer
from cryptorun_daemon.replication.transport_http import HttpPeer
from cryptorun_daemon.storage.change_feed import ChangeFeed, feed_for
from tests.harness.partitions import serving_routes
from tests.harness.testdata import seed_partitions

EU = "eu-central"


@contextlib.asynccontextmanager
async def serving_feed(root: Path) -> AsyncIterator[str]:
    """``root``'s change feed and digests on 127.0.0.1 (ephemeral port); yields the URL."""
    server = FeedServer(root=root, region=EU, feed=feed_for(root), epoch_provider=lambda _t: 1)
    async with serving_routes(server.routes()) as url:
        yield url


async def test_differences_are_repaired_in_batches_gathered_across_hours(tmp_path: Path) -> None:
    """Seven differing hours of one partition each reach ``repair`` as batches of up to
    ``batch_size`` partitions gathered across hours (3, 3, 1), not one call per hour;
    no more than REPAIRS_IN_FLIGHT batches run at once, the comparison goes on while
    they run, and every difference is handed over exactly once."""
    source, replica = tmp_path / "source", tmp_path / "replica"
    seed_partitions(source, start=datetime(2025, 9, 1, tzinfo=UTC), count=7, rows=20)
    batches: list[list[str]] = []
    running = peak = 0
    release = asyncio.Event()

    async def repair(batch: list[Difference]) -> None:
        nonlocal running, peak
        batches.append([d.manifest.partition for d in batch])
        running += 1
        peak = max(peak, running)
        try:
            # The first batches wait until a later one has been handed over: the
            # comparison must not wait for a repair before gathering the next batch.
            if len(batches) < REPAIRS_IN_FLIGHT:
                await release.wait()
            else:
                release.set()
        finally:
            running -= 1

    async with serving_feed(source) as url, aiohttp.ClientSession() as session:
        peer = HttpPeer(session, EU, url, headers={})
        # A comparison that waited for each repair would never finish: fail, not hang.
        async with asyncio.timeout(60):
            found = await compare(peer, ChangeFeed(replica), "warm", repair, batch_size=3)
    assert [len(b) for b in batches] == [3, 3, 1]
    assert peak == REPAIRS_IN_FLIGHT
    handed = [p for b in batches for p in b]
    assert len(handed) == len(set(handed)) == found.differences == 7
    assert found.differing_hours == 7
