"""Rejoin reconciliation: divergent partitions set aside, legitimate deltas pulled.

Real files in temp dirs and a real loopback partition server; no mocks.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
from prometheus_client import CollectorRegistry

from cryptorun_daemon.config import Rule
from cryptorun_daemon.metrics import Metrics
from cryptorun_daemon.replication.executor import WarmColdExecutor
from cryptorun_daemon.replication.reconcile import (
    DivergenceWalk,
    ReconcileLink,
    ReconcileRecord,
    ReconcileSource,
    set_aside_divergent,
)
from cryptorun_daemon.replication.transport_http import HttpPeer
from cryptorun_daemon.runtime.clock import SystemClock
from cryptorun_daemon.storage.catalog import Catalog
from cryptorun_daemon.storage.layout import PartitionKey
from cryptorun_daemon.storage.manifest import HashCache, Manifest
from cryptorun_daemon.storage.seal import seal_partition
from cryptorun_daemon.storage.write_fence import advance_fence
from tests.harness.partitions import serving_partitions
from tests.harness.testdata import write_trade_partition

EU, US = "eu-central", "us-east"
T0 = datetime(2025, 9, 1, tzinfo=UTC)
PROMOTED = T0 + timedelta(hours=10)


def key(hour: int) -> PartitionKey:
    return PartitionKey(
        day=T0.date(), hour=hour, tier="warm", dataset="trade", venue="kraken", symbol="BTC-USD"
    )


def fence(root: Path) -> None:
    advance_fence(
        root,
        "warm",
        epoch=2,
        primary=US,
        updated_at=PROMOTED,
        transitions=[(1, T0, EU), (2, PROMOTED, US)],
    )


def seal(root: Path, hour: int, *, at: datetime, region: str = EU, epoch: int = 1) -> Manifest:
    directory = write_trade_partition(root, key(hour), rows=50, origin=region, seed=hour)
    return seal_partition(
        directory, writer_region=region, epoch=epoch, sealed_at=at, cache=HashCache()
    )


def old_primary_root(root: Path) -> None:
    """Hour 1 sealed before the promotion (a delta), hour 2 after it (divergent)."""
    seal(root, 1, at=PROMOTED - timedelta(minutes=5))
    seal(root, 2, at=PROMOTED + timedelta(minutes=5))


def test_divergent_partitions_move_whole_under_divergent_epoch(tmp_path: Path) -> None:
    """Once the old primary's fence knows epoch 1 ended, its partition sealed after the
    promotion moves (files, manifest, marker) to warm/_divergent/epoch=1/<path>; the one
    sealed before stays; a second scan moves nothing; the catalog no longer lists it."""
    old_primary_root(tmp_path)
    assert set_aside_divergent(tmp_path, "warm", Catalog(tmp_path)) == []  # no fence yet
    fence(tmp_path)
    moved = set_aside_divergent(tmp_path, "warm", Catalog(tmp_path))
    assert [(m["partition"], m["epoch"]) for m in moved] == [(key(2).relpath, 1)]
    aside = tmp_path / "warm" / "_divergent" / "epoch=1" / key(2).relpath
    assert moved[0]["moved_to"] == str(aside.relative_to(tmp_path))
    assert sorted(p.name for p in aside.iterdir()) == [
        "_SUCCESS",
        "_manifest.json",
        "part-0000.parquet",
    ]
    assert not key(2).directory(tmp_path).exists()
    assert key(1).directory(tmp_path).is_dir()
    catalog = Catalog(tmp_path)
    assert [m.key.hour for m in catalog.sealed_manifests("warm")] == [1]
    assert catalog.ignored == 0  # _divergent/ is ours, not a stray path
    assert set_aside_divergent(tmp_path, "warm", catalog) == []


def test_divergence_walk_runs_once_per_fence(tmp_path: Path) -> None:
    """The walk is remembered with the fence it judged against: with the same fence a
    later call (a restart, a topology change that moved no epoch) walks nothing, even
    if a divergent copy was put in by hand meanwhile; once the fence moves, the next
    call walks again and sets that copy aside."""
    root, other = tmp_path / "root", tmp_path / "other"
    old_primary_root(root)
    fence(root)
    assert [m["partition"] for m in set_aside_divergent(root, "warm", Catalog(root))] == [
        key(2).relpath
    ]
    # A copy sealed by the old primary after the promotion, copied in by another tool.
    seal(other, 3, at=PROMOTED + timedelta(minutes=30))
    shutil.copytree(key(3).directory(other), key(3).directory(root))
    assert set_aside_divergent(root, "warm", Catalog(root)) == []
    assert key(3).directory(root).is_dir()
    advance_fence(
        root,
        "warm",
        epoch=3,
        primary=EU,
        updated_at=PROMOTED + timedelta(hours=2),
        transitions=[(1, T0, EU), (2, PROMOTED, US), (3, PROMOTED + timedelta(hours=2), EU)],
    )
    moved = set_aside_divergent(root, "warm", Catalog(root))
    assert [m["partition"] for m in moved] == [key(3).relpath]
    assert not key(3).directory(root).exists()
    assert key(1).directory(root).is_dir()


async def test_new_primary_pulls_only_the_legitimate_delta(tmp_path: Path) -> None:
    """The new primary's reconcile pass lists the fenced old primary with reconcile_epoch=1,
    pulls the pre-promotion partition it lacks (counted as pulled, recorded with its path),
    never the post-promotion one, and a second pass pulls nothing."""
    src, dst = tmp_path / "eu", tmp_path / "us"
    old_primary_root(src)
    fence(src)
    fence(dst)
    metrics = Metrics(CollectorRegistry())
    record = ReconcileRecord("warm")
    fenced_source = serving_partitions(
        src, EU, epoch=2, serve_guard=lambda _tier, **_kw: (409, "fenced", "not primary")
    )
    async with fenced_source as url, aiohttp.ClientSession() as session:
        peer = HttpPeer(session, EU, url, headers={})

        def executor(source: ReconcileSource) -> WarmColdExecutor:
            return WarmColdExecutor(
                root=dst,
                region=US,
                source=source,
                metrics=metrics,
                retry_backoff=0.0,
                hash_cache=HashCache(),
            )

        link = ReconcileLink(
            rule=Rule("warm", "active-passive", EU, (US,), 60.0),
            region=US,
            peer=peer,
            catalog=Catalog(dst),
            make_executor=executor,
            metrics=metrics,
            clock=SystemClock(),
            epoch_provider=lambda _t: 2,
            record=record,
            step_max_partitions=24,
        )
        first = await link.run_pass()
        second = await link.run_pass()
    assert (first.ok, first.partitions_committed) == (True, 1)
    assert (second.ok, second.partitions_committed) == (True, 0)
    assert [m.key.hour for m in Catalog(dst).sealed_manifests("warm")] == [1]
    assert (
        metrics.registry.get_sample_value(
            "cryptorun_reconciled_partitions_total", {"tier": "warm", "action": "pulled"}
        )
        == 1
    )
    doc = record.to_json()
    assert (doc["pulled"], doc["epoch"]) == (1, 2)
    assert doc["paths"]["pulled"] == [f"{key(1).relpath} (from {EU})"]
    assert doc["sources"][EU]["ok"] is True


def test_a_divergence_walk_asked_to_stop_ends_early_and_is_not_remembered(
    tmp_path: Path,
) -> None:
    """A walk whose owner asked it to stop (the daemon is shutting down) looks at no
    further manifest, moves nothing and is not remembered: the next call walks the
    tier again and sets the divergent partition aside."""
    old_primary_root(tmp_path)
    fence(tmp_path)
    stopped = DivergenceWalk(stop_requested=True)
    assert set_aside_divergent(tmp_path, "warm", Catalog(tmp_path), stopped) == []
    assert (stopped.walked, stopped.moved) == (0, 0)
    assert key(2).directory(tmp_path).is_dir()
    again = DivergenceWalk()
    moved = set_aside_divergent(tmp_path, "warm", Catalog(tmp_path), again)
    assert [m["partition"] for m in moved] == [key(2).relpath]
    assert (again.walked, again.moved) == (2, 1)
