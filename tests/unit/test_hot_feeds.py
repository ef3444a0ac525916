"""Built-in feeds: deterministic synthetic walk and JSONL replay at a speed factor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cryptorun_daemon.config import FeedConfig
from cryptorun_daemon.errors import IngestError
from cryptorun_daemon.hot.feeds_builtin import BATCH_MAX, ReplayFeed, SyntheticFeed


def config(**overrides: object) -> FeedConfig:
    base: dict[str, object] = {
        "name": "f",
        "kind": "synthetic",
        "venue": "synthetic",
        "symbols": ("BTC/USD", "ETH/USD"),
        "rate": 100.0,
        "seed": 7,
        "book_depth": 3,
    }
    base.update(overrides)
    return FeedConfig(**base)  # type: ignore[arg-type]


def test_synthetic_events_are_a_pure_function_of_seed_and_index() -> None:
    """Two feeds with one seed agree event by event, whatever order they are created in;
    another seed differs."""
    one, two = SyntheticFeed(config()), SyntheticFeed(config())
    a = [one.event(k).fields for k in range(100_000, 100_050)]
    b = [two.event(k).fields for k in range(100_000, 100_050)]
    assert a == b
    other = SyntheticFeed(config(seed=8))
    assert [other.event(k).fields for k in range(100_000, 100_050)] != a


def test_synthetic_records_match_the_schemas() -> None:
    """Trades carry trade_id = grid index; books carry depth levels on both sides."""
    feed = SyntheticFeed(config())
    kinds = {feed.event(k).dataset for k in range(200)}
    assert kinds == {"trade", "book"}
    for k in range(200, 260):
        record = feed.event(k)
        assert record.fields["ts"] == k * feed.period_ns
        if record.dataset == "trade":
            assert record.fields["trade_id"] == k
            assert record.fields["price"] > 0
        else:
            assert len(record.fields["bids_px"]) == 3 == len(record.fields["asks_qty"])
            assert record.fields["bids_px"][0] < record.fields["asks_px"][0]


async def test_synthetic_paces_to_the_clock() -> None:
    """records() emits exactly the events whose grid time has passed (fake clock and sleep)."""
    now = [10 * 10**9]

    async def sleep(seconds: float) -> None:
        now[0] += int(seconds * 1e9)

    feed = SyntheticFeed(config(rate=10.0), clock_ns=lambda: now[0], sleep=sleep)
    stream = feed.records()
    got = [await anext(stream) for _ in range(25)]
    assert [r.fields["ts"] for r in got] == [k * 100_000_000 for k in range(100, 125)]
    assert all(r.fields["ingest_ts"] >= r.fields["ts"] for r in got)


async def test_replay_honours_recorded_gaps_scaled_by_speed(tmp_path: Path) -> None:
    """Lines are replayed at speed × the recorded pace; bad lines are counted and skipped."""
    path = tmp_path / "rec.jsonl"
    lines = [
        {"recv_ns": 0, "dataset": "trade", "fields": {"trade_id": 1}},
        "not json",
        {"recv_ns": 2_000_000_000, "dataset": "book", "fields": {"bids_px": []}},
    ]
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines))
    now = [0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += int(seconds * 1e9)

    feed = ReplayFeed(
        config(kind="replay", path=path, speed=4.0), clock_ns=lambda: now[0], sleep=sleep
    )
    got = [r async for r in feed.records()]
    assert [r.dataset for r in got] == ["trade", "book"]
    assert slept == [0.5]
    assert feed.bad_lines == 1
    assert feed.status()["finished"] is True


async def test_replay_of_a_missing_file_is_an_ingest_error(tmp_path: Path) -> None:
    """A recording that cannot be read fails loudly."""
    feed = ReplayFeed(config(kind="replay", path=tmp_path / "missing.jsonl"))
    with pytest.raises(IngestError):
        [r async for r in feed.records()]


async def test_synthetic_batches_are_the_same_events_and_report_how_far_behind_they_are() -> None:
    """batches() hands over every due event in bounded batches, the same events records()
    gives; after the ingest side stalls half a second, the feed reports ~0.5 s of lag
    (below the skip threshold, nothing is skipped), and back on schedule it reports ~0."""
    now = [10 * 10**9]

    async def sleep(seconds: float) -> None:
        now[0] += int(seconds * 1e9)

    feed = SyntheticFeed(config(rate=10_000.0), clock_ns=lambda: now[0], sleep=sleep)
    batches = feed.batches()
    first = await anext(batches)
    assert len(first) == 1  # exactly the one event due at the start
    now[0] += 500_000_000  # the consumer stalled: 5,000 events fell due meanwhile
    stalled = [await anext(batches) for _ in range(5)]
    assert feed.ingest_lag_seconds() == pytest.approx(0.5, abs=0.01)
    assert all(len(batch) <= BATCH_MAX for batch in stalled)
    got = [r for batch in [first, *stalled] for r in batch]
    start = got[0].fields["ts"] // feed.period_ns
    assert [r.fields["ts"] // feed.period_ns for r in got] == list(range(start, start + len(got)))
    reference = SyntheticFeed(config(rate=10_000.0))
    for i, record in enumerate(got[:50]):
        fields = {k: v for k, v in record.fields.items() if k != "ingest_ts"}
        assert fields == reference.event(start + i).fields
    while feed.ingest_lag_seconds() > 0.01:  # drains the backlog, then waits on the grid
        await anext(batches)
    assert feed.skipped == 0
    assert feed.status()["ingest_lag_seconds"] < 0.01


def test_synthetic_chunks_are_schema_conforming_lines_a_subscriber_accepts() -> None:
    """Every event of two whole generation chunks (numpy-built) encodes to a record line
    that the subscriber's reference checks accept: int64 times, finite prices, books
    with ``depth`` ordered levels on both sides, the feed's venue and symbols."""
    from cryptorun_daemon.hot.feeds_builtin import CHUNK
    from cryptorun_daemon.hot.line_check import _check_line_reference
    from cryptorun_daemon.hot.record import encode_record

    feed = SyntheticFeed(config(symbols=("BTC/USD", "ETH/USD", "SOL/USD"), rate=1000.0))
    records = feed.events(CHUNK - 5, 2 * CHUNK + 5, ingest_ts=123)
    assert len(records) == CHUNK + 10
    for offset, record in enumerate(records):
        k = CHUNK - 5 + offset
        line = encode_record("eu", offset + 1, 123, record.dataset, record.fields).line
        checked = _check_line_reference(line, "eu", offset + 1)
        assert checked.symbol == feed.symbols[k % 3]
        assert record.fields["ingest_ts"] == 123
        if record.dataset == "book":
            bids, asks = record.fields["bids_px"], record.fields["asks_px"]
            assert bids == sorted(bids, reverse=True)
            assert asks == sorted(asks)
            assert bids[0] < asks[0]
            assert len(bids) == len(asks) == 3
        else:
            assert record.fields["side"] in ("buy", "sell")
            assert record.fields["qty"] > 0


def test_synthetic_batches_are_deterministic_by_seed_across_chunk_boundaries() -> None:
    """A batch that spans a chunk boundary equals the same events asked one by one, from
    a fresh feed and in reverse order; prices stay within a percent between neighbouring
    events of one symbol across the boundary (the walk restarts, the anchor drifts)."""
    from cryptorun_daemon.hot.feeds_builtin import CHUNK

    start, stop = 3 * CHUNK - 100, 3 * CHUNK + 100
    batch = SyntheticFeed(config()).events(start, stop)
    fresh = SyntheticFeed(config())
    single = [fresh.event(k) for k in reversed(range(start, stop))][::-1]
    assert [r.fields for r in batch] == [r.fields for r in single]
    assert [r.dataset for r in batch] == [r.dataset for r in single]
    trades = [r.fields for r in batch if r.dataset == "trade" and r.fields["symbol"] == "BTC/USD"]
    prices = [t["price"] for t in trades]
    assert max(prices) / min(prices) < 1.01
