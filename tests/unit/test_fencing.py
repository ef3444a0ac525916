"""The storage fence: who may seal, which manifests a replica applies, and what is served.

Real files in temp dirs, a real loopback HTTP server for the serving side; no mocks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from cryptorun_daemon.errors import FencedError, ReplicationError
from cryptorun_daemon.metrics import Metrics
from cryptorun_daemon.replication.executor import WarmColdExecutor
from cryptorun_daemon.replication.transport_http import HttpPeer
from cryptorun_daemon.storage.layout import PartitionKey
from cryptorun_daemon.storage.manifest import HashCache, Manifest, read_manifest
from cryptorun_daemon.storage.seal import seal_partition
from cryptorun_daemon.storage.write_fence import Fence, advance_fence, read_fence
from tests.harness.partitions import serving_partitions
from tests.harness.testdata import write_trade_partition

EU, US = "eu-central", "us-east"
T0 = datetime(2025, 9, 1, tzinfo=UTC)
PROMOTED = T0 + timedelta(hours=10)


def key(hour: int) -> PartitionKey:
    return PartitionKey(
        day=T0.date(), hour=hour, tier="warm", dataset="trade", venue="kraken", symbol="BTC-USD"
    )


def fence_at_epoch_2(root: Path) -> Fence:
    """eu-central primary at epoch 1 from T0, us-east promoted at epoch 2 at T0+10h."""
    return advance_fence(
        root,
        "warm",
        epoch=2,
        primary=US,
        updated_at=PROMOTED,
        transitions=[(1, T0, EU), (2, PROMOTED, US)],
    )


def sealed(
    root: Path, hour: int, *, region: str, epoch: int, at: datetime, seed: int = 1
) -> Manifest:
    directory = write_trade_partition(root, key(hour), rows=50, origin=region, seed=seed)
    return seal_partition(
        directory, writer_region=region, epoch=epoch, sealed_at=at, cache=HashCache()
    )


def test_fence_only_moves_forward_and_keeps_the_earliest_epoch_start(tmp_path: Path) -> None:
    """A lower epoch never lowers the fence; a later record of an epoch's start (a replayed
    promotion) does not move it; epoch 1 ends where epoch 2 starts."""
    fence_at_epoch_2(tmp_path)
    advance_fence(tmp_path, "warm", epoch=1, primary=EU, updated_at=T0, transitions=[(1, T0, EU)])
    advance_fence(
        tmp_path,
        "warm",
        epoch=2,
        primary=US,
        updated_at=PROMOTED,
        transitions=[(2, PROMOTED + timedelta(minutes=5), US)],
    )
    fence = read_fence(tmp_path, "warm")
    assert fence is not None
    assert (fence.epoch, fence.primary) == (2, US)
    assert fence.ended_at(1) == PROMOTED
    assert fence.span(2) is not None
    assert fence.span(2).started == PROMOTED  # type: ignore[union-attr]
    assert read_fence(tmp_path, "cold") is None


def test_seal_is_refused_for_a_non_primary_a_stale_and_a_future_epoch(tmp_path: Path) -> None:
    """With the fence at us-east@2 only us-east stamping epoch 2 may seal; the old primary
    (any epoch) and a made-up epoch 3 get FencedError and nothing is written."""
    fence_at_epoch_2(tmp_path)
    for region, epoch in ((EU, 1), (EU, 2), (US, 1), (US, 3)):
        directory = write_trade_partition(tmp_path, key(11), rows=20, origin=region)
        with pytest.raises(FencedError, match="seal refused"):
            seal_partition(directory, writer_region=region, epoch=epoch)
        assert not (directory / "_SUCCESS").exists()
        assert not (directory / "_manifest.json").exists()
    manifest = sealed(tmp_path, 11, region=US, epoch=2, at=PROMOTED + timedelta(hours=1))
    assert (manifest.epoch, manifest.writer_region) == (2, US)


def test_seal_without_a_fence_is_not_fenced(tmp_path: Path) -> None:
    """No fence file (a fresh root, or a tool working on a copy) means nothing to enforce."""
    manifest = sealed(tmp_path, 1, region=EU, epoch=7, at=T0)
    assert manifest.epoch == 7


def test_classify_tells_history_from_divergent_writes(tmp_path: Path) -> None:
    """Epoch-1 data by eu-central before the promotion is history; after it, or by a region
    that was not primary at that epoch, it is divergent; epoch-2 data by us-east is current."""
    fence = fence_at_epoch_2(tmp_path)
    before = sealed(tmp_path / "a", 1, region=EU, epoch=1, at=PROMOTED - timedelta(seconds=1))
    after = sealed(tmp_path / "b", 2, region=EU, epoch=1, at=PROMOTED)
    wrong_writer = sealed(tmp_path / "c", 3, region=US, epoch=1, at=T0 + timedelta(hours=1))
    current = sealed(tmp_path / "d", 4, region=US, epoch=2, at=PROMOTED + timedelta(hours=1))
    impostor = sealed(tmp_path / "e", 5, region=EU, epoch=2, at=PROMOTED + timedelta(hours=1))
    assert fence.classify(before) == "history"
    assert fence.classify(after) == "divergent"
    assert fence.classify(wrong_writer) == "divergent"
    assert fence.classify(current) == "current"
    assert fence.classify(impostor) == "divergent"


@pytest.fixture
async def source(tmp_path: Path) -> AsyncIterator[tuple[Path, str, aiohttp.ClientSession]]:
    """A partition server over a source root holding hours 1 (pre-promotion) and 2 (post)."""
    root = tmp_path / "src"
    sealed(root, 1, region=EU, epoch=1, at=PROMOTED - timedelta(hours=1), seed=1)
    sealed(root, 2, region=EU, epoch=1, at=PROMOTED + timedelta(minutes=1), seed=2)
    async with serving_partitions(root, EU) as url, aiohttp.ClientSession() as session:
        yield root, url, session


async def test_replica_quarantines_a_fenced_manifest_instead_of_applying_it(
    tmp_path: Path,
    source: tuple[Path, str, aiohttp.ClientSession],
) -> None:
    """A replica whose fence knows epoch 1 ended applies the pre-promotion partition and
    refuses the one sealed after: it is kept under _quarantine as fenced and counted once
    (quarantine kind=fenced, fenced operation=apply), and the step fails with "fenced"."""
    _, url, session = source
    dst = tmp_path / "dst"
    fence_at_epoch_2(dst)
    metrics = Metrics(CollectorRegistry())
    peer = HttpPeer(session, EU, url, headers={})
    executor = WarmColdExecutor(
        root=dst, region=US, source=peer, metrics=metrics, retry_backoff=0.0, hash_cache=HashCache()
    )
    listing = await peer.list_partitions("warm")
    by_hour = {m.key.hour: m for m in listing.manifests}
    assert [m.key.hour for m in executor.accepted(list(listing.manifests))] == [1]
    assert executor.accepted(list(listing.manifests)) == [by_hour[1]]  # counted once
    await executor.replicate_partition(by_hour[1])
    assert read_manifest(key(1).directory(dst)) == by_hour[1]
    with pytest.raises(ReplicationError) as refused:
        await executor.replicate_partition(by_hour[2])
    assert refused.value.reason == "fenced"
    assert not key(2).directory(dst).exists()
    kept = list((dst / "_quarantine" / "warm" / US).rglob("*.manifest.json"))
    assert len(kept) == 1
    assert kept[0].with_name(kept[0].name + ".error.json").is_file()
    sample = metrics.registry.get_sample_value
    assert (
        sample("cryptorun_quarantine_total", {"tier": "warm", "region": US, "kind": "fenced"}) == 1
    )
    assert sample("cryptorun_fenced_total", {"tier": "warm", "operation": "apply"}) == 1


async def test_reconcile_listing_offers_only_legitimate_old_epoch_partitions(
    source: tuple[Path, str, aiohttp.ClientSession],
) -> None:
    """reconcile_epoch=1 is 409 until the source's fence knows epoch 1 ended; then it lists
    and serves only the partition sealed before the promotion, and refuses the later one."""
    root, url, session = source
    peer = HttpPeer(session, EU, url, headers={})
    with pytest.raises(ReplicationError, match="has not learned"):
        await peer.list_partitions("warm", reconcile_epoch=1)
    fence_at_epoch_2(root)
    listing = await peer.list_partitions("warm", reconcile_epoch=1)
    assert [m.key.hour for m in listing.manifests] == [1]
    for hour, status in ((1, 200), (2, 409)):
        file_url = f"{url}/v1/partitions/warm/{key(hour).relpath}/part-0000.parquet"
        async with session.get(file_url, params={"reconcile_epoch": "1"}) as resp:
            assert resp.status == status
