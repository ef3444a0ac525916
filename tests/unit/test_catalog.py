"""Catalog scans: typed entries, sealed vs open, hostile trees counted and skipped."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from cryptorun_daemon.config import Tier
from cryptorun_daemon.metrics import Metrics
from cryptorun_daemon.storage import catalog as catalog_module
from cryptorun_daemon.storage.catalog import Catalog
from cryptorun_daemon.storage.layout import parse_partition_path
from cryptorun_daemon.storage.manifest import HashCache
from tests.harness.testdata import seed_partitions, write_trade_partition

T0 = datetime(2025, 9, 1, tzinfo=UTC)


def _ignored(metrics: Metrics, tier: str) -> float:
    value = metrics.registry.get_sample_value(
        "cryptorun_catalog_ignored_paths_total", {"tier": tier}
    )
    return value or 0.0


def test_scan_lists_sealed_and_open_partitions_oldest_first(tmp_path: Path) -> None:
    """Sealed partitions carry their manifest; open ones are listed as unsealed."""
    seed_partitions(tmp_path, start=T0, count=3, rows=50)
    open_key = parse_partition_path(
        "warm", "trade/venue=kraken/symbol=BTC-USD/date=2025-09-01/hour=05"
    )
    write_trade_partition(tmp_path, open_key, rows=10)
    entries = Catalog(tmp_path).scan("warm")
    assert [e.key.hour for e in entries] == [0, 1, 2, 5]
    assert [e.sealed for e in entries] == [True, True, True, False]
    assert entries[0].manifest is not None
    assert entries[3].manifest is None


def test_paths_outside_the_layout_are_counted_not_fatal(tmp_path: Path) -> None:
    """Stray files, bad names and symlinked dirs are skipped with a counted warning."""
    seed_partitions(tmp_path, start=T0, count=1, rows=50)
    warm = tmp_path / "warm"
    (warm / "README.txt").write_text("not data")
    (warm / "trade" / "venue=kraken" / "symbol=btc_usd" / "date=2025-09-01" / "hour=00").mkdir(
        parents=True
    )
    (warm / "trade" / "venue=kraken" / "symbol=BTC-USD" / "date=2025-09-01" / "hour=99").mkdir()
    (warm / "trade" / "venue=kraken" / "symbol=BTC-USD" / "date=2025-13-01" / "hour=00").mkdir(
        parents=True
    )
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    os.symlink(outside, warm / "trade" / "venue=kraken" / "symbol=BTC-USD" / "date=2025-09-02")
    (warm / "trade" / "venue=kraken" / "symbol=BTC-USD" / "date=2025-09-01" / "hour=01").mkdir()
    (
        warm
        / "trade"
        / "venue=kraken"
        / "symbol=BTC-USD"
        / "date=2025-09-01"
        / "hour=01"
        / "nested"
    ).mkdir()
    metrics = Metrics(CollectorRegistry())
    entries = Catalog(tmp_path, metrics=metrics).scan("warm")
    assert [str(e.key) for e in entries if e.sealed] == [
        "warm/trade/venue=kraken/symbol=BTC-USD/date=2025-09-01/hour=00"
    ]
    assert _ignored(metrics, "warm") == 5


def test_window_bounds_limit_the_scan(tmp_path: Path) -> None:
    """Only partitions overlapping [start, end) are returned."""
    seed_partitions(tmp_path, start=T0, count=30, rows=20)
    entries = Catalog(tmp_path).scan(
        "warm", start=datetime(2025, 9, 1, 22, tzinfo=UTC), end=datetime(2025, 9, 2, 2, tzinfo=UTC)
    )
    assert [(e.key.day.day, e.key.hour) for e in entries] == [(1, 22), (1, 23), (2, 0), (2, 1)]


def test_owner_computes_manifest_for_success_only_partitions(tmp_path: Path) -> None:
    """A partition sealed by a foreign writer (_SUCCESS only) gets a manifest from the owner."""
    key = parse_partition_path("warm", "trade/venue=kraken/symbol=BTC-USD/date=2025-09-01/hour=00")
    directory = write_trade_partition(tmp_path, key, rows=30)
    (directory / "_SUCCESS").write_bytes(b"")
    catalog = Catalog(tmp_path, hash_cache=HashCache())
    [entry] = catalog.scan("warm")
    assert entry.sealed
    assert entry.manifest is None
    assert entry.problem
    [entry] = catalog.scan("warm", owner=("eu-central", 4))
    assert entry.manifest is not None
    assert entry.manifest.epoch == 4
    assert (directory / "_manifest.json").is_file()


def test_unchanged_rescan_reuses_parsed_manifests(tmp_path: Path) -> None:
    """A second scan returns the very same manifest objects (cached by file identity)."""
    seed_partitions(tmp_path, start=T0, count=2, rows=20)
    catalog = Catalog(tmp_path)
    first = catalog.sealed_manifests("warm")
    second = catalog.sealed_manifests("warm")
    assert all(a is b for a, b in zip(first, second, strict=True))


def test_a_cached_partition_that_changed_is_read_afresh(tmp_path: Path) -> None:
    """The reuse of a parsed manifest follows the disk: a partition unsealed since the
    last scan (``_SUCCESS`` gone) is reported unsealed, and a manifest rewritten in
    place (a re-seal) is parsed again, not served from the cache."""
    dirs = seed_partitions(tmp_path, start=T0, count=2, rows=20)
    catalog = Catalog(tmp_path)
    before = catalog.scan("warm")
    assert all(e.sealed and e.manifest is not None for e in before)
    (dirs[0] / "_SUCCESS").unlink()
    manifest_path = dirs[1] / "_manifest.json"
    manifest_path.write_bytes(manifest_path.read_bytes().replace(b'"epoch": 1', b'"epoch": 7'))
    after = {e.key: e for e in catalog.scan("warm")}
    assert not after[before[0].key].sealed
    assert after[before[0].key].manifest is None
    reread = after[before[1].key].manifest
    assert reread is not None
    assert reread is not before[1].manifest
    assert reread.epoch == 7


def test_missing_tier_directory_is_empty(tmp_path: Path) -> None:
    """A root without a tier folder scans as empty, not as an error."""
    assert Catalog(tmp_path).scan("cold") == []


def test_windowed_scan_finds_what_a_full_scan_finds_in_the_window(tmp_path: Path) -> None:
    """A short window's days are looked up by name: the result equals the full scan
    filtered to the window (warm hours across midnight, cold days), and a file where a
    day's directory should be is ignored and counted, never followed."""
    seed_partitions(tmp_path, tier="warm", start=T0, count=30, rows=5)  # two days
    seed_partitions(tmp_path, tier="cold", start=T0, count=3, rows=5)
    metrics = Metrics(CollectorRegistry())
    catalog = Catalog(tmp_path, metrics=metrics)
    windows: list[tuple[Tier, datetime, datetime]] = [
        ("warm", T0 + timedelta(hours=20), T0 + timedelta(hours=26)),
        ("cold", T0 + timedelta(days=1), T0 + timedelta(days=3)),
    ]
    for tier, start, end in windows:
        every = catalog.scan(tier)
        wanted = [e.key for e in every if e.key.start < end and e.key.end > start]
        assert wanted
        assert [e.key for e in catalog.scan(tier, start=start, end=end)] == wanted
    symbol_dir = next((tmp_path / "warm").glob("*/*/*"))
    (symbol_dir / "date=2025-09-03").write_text("not a directory")
    window = catalog.scan(
        "warm", start=datetime(2025, 9, 3, tzinfo=UTC), end=datetime(2025, 9, 4, tzinfo=UTC)
    )
    assert window == []
    assert _ignored(metrics, "warm") == 1


def test_a_scan_larger_than_the_cache_bound_keeps_no_manifests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Manifests are kept between scans only when a scan finds at most
    MAX_CACHED_MANIFESTS of them: a full scan of a history larger than the bound leaves
    nothing cached (memory never follows the history); a windowed scan within the
    bound is cached again."""
    monkeypatch.setattr(catalog_module, "MAX_CACHED_MANIFESTS", 2)
    seed_partitions(tmp_path, start=T0, count=3, rows=20)
    catalog = Catalog(tmp_path)
    assert len(catalog.sealed_manifests("warm")) == 3
    assert catalog.cached("warm") == 0
    window = catalog.sealed_manifests("warm", start=T0, end=T0 + timedelta(hours=2))
    assert len(window) == 2
    assert catalog.cached("warm") == 2
