"""The planner's PIT rule, minimality, ordering, bounds and determinism; lag; intervals."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from cryptorun_daemon.replication.lag import compute_lag
from cryptorun_daemon.replication.planner import Committed, PeerHealth, plan_replication
from cryptorun_daemon.replication.rules import TimeRange
from cryptorun_daemon.replication.scheduler import PassScheduler, interval_for_slo
from cryptorun_daemon.storage.layout import PartitionKey
from cryptorun_daemon.storage.manifest import FileEntry, Manifest

T0 = datetime(2025, 9, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)
NOW = T0 + timedelta(days=2)


@dataclass(frozen=True)
class Part:
    """A typed in-memory source partition (what a catalog entry provides)."""

    key: PartitionKey
    sealed: bool
    manifest: Manifest | None


def make(
    hour_offset: int,
    *,
    symbol: str = "BTC-USD",
    sealed: bool = True,
    tier: str = "warm",
    content: str = "a",
    epoch: int = 1,
    size: int = 100,
) -> Part:
    start = T0 + hour_offset * (timedelta(days=1) if tier == "cold" else HOUR)
    key = PartitionKey(
        start.date(),
        None if tier == "cold" else start.hour,
        tier,  # type: ignore[arg-type]
        "trade",
        "kraken",
        symbol,
    )
    manifest = Manifest(
        tier=key.tier,
        partition=key.relpath,
        files=(FileEntry("part-0.parquet", size, f"xxh3_128:{content}"),),
        schema_fingerprint=None,
        writer_region="eu-central",
        epoch=epoch,
        sealed_at=key.end + timedelta(seconds=30),
    )
    return Part(key, sealed, manifest if sealed else None)


def plan(source: list[Part], window: TimeRange, **kwargs: object):  # type: ignore[no-untyped-def]
    args: dict[str, object] = {
        "tier": "warm",
        "from_region": "eu-central",
        "to_region": "us-east",
        "window": window,
        "source": source,
        "destination": {},
        "now": NOW,
    }
    args.update(kwargs)
    return plan_replication(**args)  # type: ignore[arg-type]


def paths(p) -> list[str]:  # type: ignore[no-untyped-def]
    return [part.path for step in p.steps for part in step.partitions]


def test_pit_partition_ending_exactly_at_end_is_in() -> None:
    """[05:00, 06:00) lies inside [00:00, 06:00); [06:00, 07:00) starts at end and is out."""
    window = TimeRange(T0, T0 + 6 * HOUR)
    result = plan([make(5), make(6)], window)
    assert paths(result) == [make(5).key.relpath]
    assert result.skipped == ()


def test_pit_partition_crossing_end_is_out() -> None:
    """A daily partition crossing the window end is skipped as crosses_window."""
    window = TimeRange(T0, T0 + 6 * HOUR)
    day = make(0, tier="cold")
    result = plan([day], window, tier="cold")
    assert result.steps == ()
    assert [s.why for s in result.skipped] == ["crosses_window"]


def test_unsealed_and_future_partitions_are_out() -> None:
    """An unsealed partition and one whose span ends after now are never planned."""
    window = TimeRange(T0, T0 + timedelta(days=5))
    result = plan([make(1, sealed=False), make(2), make(60)], window)
    assert paths(result) == [make(2).key.relpath]
    assert {(s.path, s.why) for s in result.skipped} == {
        (make(1).key.relpath, "unsealed"),
        (make(60).key.relpath, "future"),
    }


def test_only_missing_or_different_partitions_are_copied() -> None:
    """Same content hash → in sync; different → replace; absent → copy."""
    window = TimeRange(T0, T0 + 6 * HOUR)
    a, b, c = make(0), make(1, content="new"), make(2)
    dest = {
        a.key.relpath: Committed(a.manifest.content_hash, 1),  # type: ignore[union-attr]
        b.key.relpath: Committed("xxh3_128:old", 1),
    }
    result = plan([a, b, c], window, destination=dest)
    assert result.in_sync == 1
    actions = {p.path: p.action for s in result.steps for p in s.partitions}
    assert actions == {b.key.relpath: "replace", c.key.relpath: "copy"}


def test_newer_epoch_at_destination_is_never_replaced() -> None:
    """A fenced former primary (older epoch) cannot overwrite its successor's data."""
    window = TimeRange(T0, T0 + 6 * HOUR)
    old = make(0, content="old", epoch=1)
    result = plan([old], window, destination={old.key.relpath: Committed("xxh3_128:n", 2)})
    assert result.steps == ()
    assert [s.why for s in result.skipped] == ["stale_epoch"]


def test_steps_are_hourly_windows_oldest_first_and_bounded() -> None:
    """Warm steps are one hour each, oldest first, split at step_max_partitions."""
    symbols = ["BTC-USD", "ETH-USD", "SOL-USD"]
    source = [make(h, symbol=s) for h in (3, 1, 2) for s in symbols]
    result = plan(source, TimeRange(T0, T0 + 6 * HOUR), step_max_partitions=2)
    assert [(str(s.window), len(s.partitions)) for s in result.steps] == [
        ("2025-09-01T01:00:00Z/2025-09-01T02:00:00Z", 2),
        ("2025-09-01T01:00:00Z/2025-09-01T02:00:00Z", 1),
        ("2025-09-01T02:00:00Z/2025-09-01T03:00:00Z", 2),
        ("2025-09-01T02:00:00Z/2025-09-01T03:00:00Z", 1),
        ("2025-09-01T03:00:00Z/2025-09-01T04:00:00Z", 2),
        ("2025-09-01T03:00:00Z/2025-09-01T04:00:00Z", 1),
    ]


def test_cold_steps_are_daily() -> None:
    """Cold partitions are planned one day per step."""
    result = plan(
        [make(0, tier="cold"), make(1, tier="cold")],
        TimeRange(T0, T0 + timedelta(days=2)),
        tier="cold",
    )
    assert [str(s.window) for s in result.steps] == [
        "2025-09-01T00:00:00Z/2025-09-02T00:00:00Z",
        "2025-09-02T00:00:00Z/2025-09-03T00:00:00Z",
    ]


def test_unhealthy_peer_gives_no_steps_and_a_reason() -> None:
    """With the peer down the plan is empty and says why."""
    result = plan(
        [make(0)], TimeRange(T0, T0 + HOUR), peer=PeerHealth(False, "peer eu-central unreachable")
    )
    assert result.steps == ()
    assert result.reason == "peer eu-central unreachable"
    assert result.problems() == ["peer eu-central unreachable"]


def test_plans_are_deterministic() -> None:
    """Shuffled inputs produce the identical plan (and identical JSON)."""
    source = [make(h, symbol=s) for h in range(24) for s in ("BTC-USD", "ETH-USD")]
    source.append(make(3, sealed=False, symbol="SOL-USD"))
    window = TimeRange(T0, T0 + 12 * HOUR)
    expected = plan(source, window, validators=["schema"])
    for seed in range(5):
        shuffled = source[:]
        random.Random(seed).shuffle(shuffled)
        again = plan(shuffled, window, validators=["schema"])
        assert again == expected
        assert again.to_json() == expected.to_json()


def test_lag_is_age_of_oldest_uncommitted_sealed_partition() -> None:
    """Lag = now − seal time of the oldest pending partition; 0 when everything is committed."""
    parts = [make(h) for h in range(3)]
    manifests = [p.manifest for p in parts if p.manifest is not None]
    now = T0 + 10 * HOUR
    report = compute_lag(manifests, {}, now)
    assert report.pending_partitions == 3
    assert report.pending_bytes == 300
    assert report.lag_seconds == (now - manifests[0].sealed_at).total_seconds()
    committed = {m.partition: Committed(m.content_hash, m.epoch) for m in manifests}
    assert compute_lag(manifests, committed, now).lag_seconds == 0
    committed.pop(manifests[1].partition)
    assert compute_lag(manifests, committed, now).oldest_pending == f"warm/{manifests[1].partition}"


@pytest.mark.parametrize(("slo", "interval"), [(60.0, 15.0), (1.0, 0.5), (3600.0, 60.0)])
def test_scheduler_interval_follows_the_slo(slo: float, interval: float) -> None:
    """Passes run every SLO/4, clamped to [0.5 s, 60 s]."""
    assert interval_for_slo(slo) == interval


async def test_scheduler_runs_one_pass_at_a_time() -> None:
    """Concurrent triggers never overlap: each waits for the pass in flight."""
    import asyncio

    running = 0
    peak = 0

    async def one_pass() -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0)
        running -= 1
        return running

    scheduler = PassScheduler("t", 1.0, one_pass, rng=lambda: 1.0)
    await asyncio.gather(*(scheduler.trigger() for _ in range(5)))
    assert peak == 1
    assert scheduler.passes == 5
    assert scheduler.next_delay() == pytest.approx(1.1)


def test_partition_sealed_before_its_hour_ends_is_planned_by_its_seal_time() -> None:
    """An hour partition the hot sealer sealed early (sub-hour windows) holds nothing past its
    seal time, so it is not "future" once sealed; point-in-time still judges its whole span."""
    from dataclasses import replace

    now = T0 + 10 * HOUR + timedelta(minutes=6)
    early = make(10)
    assert early.manifest is not None
    sealed_early = Part(
        early.key, True, replace(early.manifest, sealed_at=T0 + 10 * HOUR + timedelta(minutes=5))
    )
    result = plan([sealed_early], TimeRange(T0, T0 + 11 * HOUR), now=now)
    assert paths(result) == [early.key.relpath]
    # A window ending inside the hour excludes it even though its data ends before the cut.
    inside = plan([sealed_early], TimeRange(T0, T0 + 10 * HOUR + timedelta(minutes=30)), now=now)
    assert paths(inside) == []
    # A seal time before the span starts is a skewed clock, not an early seal.
    tomorrow = make(34)
    assert tomorrow.manifest is not None
    skewed = Part(tomorrow.key, True, replace(tomorrow.manifest, sealed_at=now - HOUR))
    far = plan([skewed], TimeRange(T0, T0 + 3 * 24 * HOUR), now=now)
    assert paths(far) == []
    assert [s.why for s in far.skipped] == ["future"]
    # Without the early seal (sealed after the hour) the same hour is still in the future.
    later = plan([make(10)], TimeRange(T0, T0 + 11 * HOUR), now=now)
    assert paths(later) == []
    assert [s.why for s in later.skipped] == ["future"]
