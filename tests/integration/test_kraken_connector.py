"""KrakenFeed against the local Kraken-protocol server over real WebSockets on loopback.

Every test drives faults through the server object and observes the feed only
through what a caller sees: records, ``status()`` and metrics. Waits are
bounded polls (``wait_until``), never timing assertions.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from cryptorun_daemon.config.model import FeedConfig
from cryptorun_daemon.errors import IngestError
from cryptorun_daemon.hot.feed import Feed, MarketRecord
from cryptorun_daemon.ingest.kraken.connector import KrakenFeed
from cryptorun_daemon.ingest.kraken.testserver import KrakenTestServer
from cryptorun_daemon.metrics import Metrics
from tests.harness.net import free_port
from tests.harness.wait import eventually

SYMBOLS = ("BTC/USD", "ETH/USD", "SOL/USD")
# Long enough that a loaded CI machine never mistakes a busy event loop for a
# silent server; the tests about silence pass a short SHORT_SILENCE instead.
HEARTBEAT_TIMEOUT = 5.0
SHORT_SILENCE = 1.0


def feed_config(**overrides: Any) -> FeedConfig:
    values: dict[str, Any] = {
        "name": "kraken-test", "kind": "kraken", "venue": "kraken", "symbols": SYMBOLS,
        "heartbeat_timeout": HEARTBEAT_TIMEOUT,
    }  # fmt: skip
    values.update(overrides)
    return FeedConfig(**values)


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, {"venue": "kraken", **labels}) or 0.0


@dataclass
class Consumer:
    """Runs ``feed.records()`` in an owned task and keeps every record."""

    feed: KrakenFeed
    records: list[MarketRecord] = field(default_factory=list)

    def of(self, dataset: str, symbol: str | None = None) -> list[dict[str, Any]]:
        return [
            r.fields for r in self.records
            if r.dataset == dataset and (symbol is None or r.fields["symbol"] == symbol)
        ]  # fmt: skip

    @property
    def status(self) -> dict[str, Any]:
        return self.feed.status()


@contextlib.asynccontextmanager
async def consuming(feed: KrakenFeed) -> AsyncIterator[Consumer]:
    consumer = Consumer(feed)
    records = feed.records()

    async def run() -> None:
        async for record in records:
            consumer.records.append(record)

    task = asyncio.create_task(run(), name="kraken-test-consumer")
    try:
        yield consumer
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await records.aclose()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


@pytest.fixture
async def server() -> AsyncIterator[KrakenTestServer]:
    async with KrakenTestServer(rate=40, heartbeat_interval=0.1, seed=7) as srv:
        yield srv


def make_feed(server: KrakenTestServer, metrics: Metrics, **overrides: Any) -> KrakenFeed:
    return KrakenFeed(
        feed_config(**overrides), metrics, url=server.url, backoff_initial=0.05, backoff_max=0.2
    )


def requests_on(server: KrakenTestServer, connection: int) -> list[dict[str, Any]]:
    return [r for r in server.requests if r["_connection"] == connection]


def channels_subscribed(requests: list[dict[str, Any]]) -> set[str]:
    return {r["params"]["channel"] for r in requests if r["method"] == "subscribe"}


async def test_subscribes_and_emits_checksummed_books_and_trades(
    server: KrakenTestServer, metrics: Metrics
) -> None:
    """The feed subscribes instrument, trade and book, gets per-symbol acks, and emits
    valid records for every symbol with no checksum failure."""
    feed = make_feed(server, metrics)
    assert isinstance(feed, Feed)
    async with consuming(feed) as consumer:
        await eventually(
            lambda: all(
                len(consumer.of("book", s)) >= 30 and consumer.of("trade", s) for s in SYMBOLS
            ),
            "books and trades for every symbol",
        )
        status = consumer.status
    assert status["connected"] is True
    for symbol in SYMBOLS:
        assert status["symbols"][symbol]["subscribed"] == {"book": True, "trade": True}
        assert status["symbols"][symbol]["checksum_failures"] == 0
    subscribes = [r for r in requests_on(server, 1) if r["method"] == "subscribe"]
    by_channel = {r["params"]["channel"]: r["params"] for r in subscribes}
    assert by_channel["trade"] == {"channel": "trade", "symbol": list(SYMBOLS), "snapshot": True}
    assert by_channel["book"]["depth"] == 10
    assert sorted(by_channel["book"]["symbol"]) == sorted(SYMBOLS)
    assert "instrument" in by_channel
    book = consumer.of("book", "BTC/USD")[-1]
    assert len(book["bids_px"]) == len(book["asks_px"]) == 10
    assert book["bids_px"] == sorted(book["bids_px"], reverse=True)
    assert book["asks_px"] == sorted(book["asks_px"])
    assert book["bids_px"][0] < book["asks_px"][0]
    assert book["suspect"] is False
    trade = consumer.of("trade", "ETH/USD")[-1]
    assert set(trade) == {"ts", "venue", "symbol", "side", "price", "qty", "trade_id", "ingest_ts"}
    assert isinstance(trade["ts"], int)
    assert isinstance(trade["ingest_ts"], int)
    assert sample(metrics, "cryptorun_ingest_checksum_failures_total", symbol="BTC/USD") == 0
    assert sample(metrics, "cryptorun_ingest_messages_total", channel="book") > 0
    assert sample(metrics, "cryptorun_ingest_messages_total", channel="subscribe") >= 7


async def test_deeper_book_subscription_truncates_and_checks_out(
    server: KrakenTestServer, metrics: Metrics
) -> None:
    """With depth 25 the feed keeps 25 levels a side and every checksum still matches."""
    async with consuming(make_feed(server, metrics, book_depth=25)) as consumer:
        await eventually(lambda: len(consumer.of("book", "SOL/USD")) >= 50, "50 SOL/USD books")
        assert consumer.status["symbols"]["SOL/USD"]["checksum_failures"] == 0
    assert len(consumer.of("book", "SOL/USD")[-1]["bids_qty"]) == 25


async def test_error_acks_are_logged_and_counted_without_stopping(
    server: KrakenTestServer, metrics: Metrics
) -> None:
    """An unknown pair and a refused book subscription become counted errors; the
    other symbols keep flowing."""
    server.fail_next_subscribe("book", "ETH/USD", "Subscription depth not supported")
    feed = make_feed(server, metrics, symbols=(*SYMBOLS, "XXX/USD"))
    async with consuming(feed) as consumer:
        await eventually(lambda: len(consumer.of("book", "BTC/USD")) >= 10, "BTC/USD books")
        await eventually(
            lambda: sample(metrics, "cryptorun_ingest_errors_total", kind="subscribe_error") >= 2,
            "two subscribe errors (XXX/USD trade, ETH/USD book)",
        )
        status = consumer.status
    assert status["symbols"]["XXX/USD"]["subscribed"] == {"trade": False}
    assert status["symbols"]["ETH/USD"]["subscribed"]["book"] is False
    assert consumer.of("book", "ETH/USD") == []
    assert consumer.of("trade", "ETH/USD"), "ETH/USD trades still flow"
    assert sample(metrics, "cryptorun_ingest_errors_total", kind="unknown_symbol") == 1
    assert status["reconnects"] == {"timeout": 0, "closed": 0, "error": 0, "refused": 0}
    kinds = {e["kind"] for e in status["recent_errors"]}
    assert {"subscribe_error", "unknown_symbol"} <= kinds


async def test_silence_triggers_ping_then_reconnect_and_full_resubscribe(
    server: KrakenTestServer, metrics: Metrics
) -> None:
    """A server that goes silent is probed with a ping, then dropped after
    heartbeat_timeout; the feed reconnects, resubscribes everything, and data resumes."""
    async with consuming(make_feed(server, metrics, heartbeat_timeout=SHORT_SILENCE)) as consumer:
        await eventually(lambda: len(consumer.of("book")) >= 10, "first books")
        assert server.go_silent() == 1
        await eventually(lambda: server.connections_total >= 2, "a second connection")
        resumed_from = len(consumer.records)
        await eventually(
            lambda: (
                {r.fields["symbol"] for r in consumer.records[resumed_from:] if r.dataset == "book"}
                == set(SYMBOLS)
            ),
            "books for every symbol after the reconnect",
        )
        status = consumer.status
    assert any(r["method"] == "ping" for r in requests_on(server, 1)), "probe ping sent"
    assert status["reconnects"]["timeout"] == 1
    assert sample(metrics, "cryptorun_ingest_reconnects_total", cause="timeout") == 1
    assert channels_subscribed(requests_on(server, 2)) == {"instrument", "trade", "book"}


async def test_idle_server_answering_pings_keeps_the_connection(metrics: Metrics) -> None:
    """With no market data and slow heartbeats, pongs to the feed's pings prove the
    connection alive: no reconnect."""
    async with KrakenTestServer(rate=0, heartbeat_interval=30) as idle:
        async with consuming(make_feed(idle, metrics, heartbeat_timeout=SHORT_SILENCE)) as consumer:
            await eventually(
                lambda: sample(metrics, "cryptorun_ingest_messages_total", channel="pong") >= 4,
                "four pongs",
            )
            assert consumer.status["reconnects"]["timeout"] == 0
            assert idle.connections_total == 1


async def test_corrupted_checksum_resubscribes_that_symbol_and_marks_suspect(
    server: KrakenTestServer, metrics: Metrics
) -> None:
    """A bad checksum is counted, the symbol's book is resubscribed alone, records in
    between are suspect, and the fresh snapshot repairs it."""
    async with consuming(make_feed(server, metrics)) as consumer:
        await eventually(lambda: len(consumer.of("book", "BTC/USD")) >= 5, "BTC/USD books")
        server.corrupt_next_checksum("BTC/USD")
        await eventually(
            lambda: any(b["suspect"] for b in consumer.of("book", "BTC/USD")),
            "a suspect BTC/USD book",
        )
        await eventually(
            lambda: not consumer.of("book", "BTC/USD")[-1]["suspect"], "a repaired BTC/USD book"
        )
        status = consumer.status
    assert sample(metrics, "cryptorun_ingest_checksum_failures_total", symbol="BTC/USD") == 1
    assert status["symbols"]["BTC/USD"]["book_resubscribes"] == 1
    assert status["symbols"]["BTC/USD"]["book_suspect"] is False
    book_requests = [
        (r["method"], r["params"]["symbol"])
        for r in requests_on(server, 1)
        if r["params"]["channel"] == "book"
    ]
    assert book_requests[1:] == [("unsubscribe", ["BTC/USD"]), ("subscribe", ["BTC/USD"])]
    for other in ("ETH/USD", "SOL/USD"):
        assert not any(b["suspect"] for b in consumer.of("book", other))
    assert status["reconnects"]["closed"] == 0


async def test_skipped_trade_id_is_a_counted_gap(
    server: KrakenTestServer, metrics: Metrics
) -> None:
    """A jump in ETH/USD trade ids is counted and shown in status with its size."""
    async with consuming(make_feed(server, metrics)) as consumer:
        await eventually(lambda: len(consumer.of("trade", "ETH/USD")) >= 1, "an ETH/USD trade")
        server.skip_trade_ids("ETH/USD", 5)
        await eventually(
            lambda: sample(metrics, "cryptorun_ingest_trade_id_gaps_total", symbol="ETH/USD") == 1,
            "an ETH/USD gap",
        )
        eth = consumer.status["symbols"]["ETH/USD"]
    assert (eth["trade_id_gaps"], eth["missing_trade_ids"]) == (1, 5)
    assert consumer.status["symbols"]["BTC/USD"]["trade_id_gaps"] == 0


async def test_dropped_trade_message_is_a_gap(server: KrakenTestServer, metrics: Metrics) -> None:
    """A trade message lost in transit shows up as a trade_id gap."""
    async with consuming(make_feed(server, metrics)) as consumer:
        await eventually(lambda: len(consumer.of("trade", "SOL/USD")) >= 1, "a SOL/USD trade")
        server.drop_next("trade", "SOL/USD")
        await eventually(
            lambda: consumer.status["symbols"]["SOL/USD"]["trade_id_gaps"] == 1, "a SOL/USD gap"
        )
    assert sample(metrics, "cryptorun_ingest_trade_id_gaps_total", symbol="SOL/USD") == 1


async def test_non_json_frame_is_counted_and_tolerated(
    server: KrakenTestServer, metrics: Metrics
) -> None:
    """A non-JSON text frame (as Kraken's proxy sometimes sends) is counted; nothing dies."""
    async with consuming(make_feed(server, metrics)) as consumer:
        await eventually(lambda: len(consumer.records) >= 5, "first records")
        await server.send_raw("<html><body>502 Bad Gateway</body></html>")
        await eventually(
            lambda: sample(metrics, "cryptorun_ingest_errors_total", kind="non_json") >= 1,
            "the frame counted",
        )
        seen = len(consumer.records)
        await eventually(lambda: len(consumer.records) >= seen + 20, "records after the frame")
        status = consumer.status
    assert sample(metrics, "cryptorun_ingest_errors_total", kind="non_json") == 1
    assert status["reconnects"] == {"timeout": 0, "closed": 0, "error": 0, "refused": 0}
    assert server.connections_total == 1


async def test_closed_connection_reconnects_and_dedups_the_trade_snapshot(
    server: KrakenTestServer, metrics: Metrics
) -> None:
    """After the server closes the connection the feed reconnects ("closed"), and the
    replayed 50-trade snapshot yields no duplicate trade ids."""
    async with consuming(make_feed(server, metrics)) as consumer:
        await eventually(lambda: len(consumer.of("trade")) >= 60, "sixty trades")
        await server.close_connections()
        await eventually(lambda: server.connections_total >= 2, "a second connection")
        await eventually(
            lambda: (
                all(consumer.status["symbols"][s]["subscribed"].get("trade") for s in SYMBOLS)
                and consumer.status["connected"]
            ),
            "trades resubscribed",
        )
        seen = len(consumer.of("trade"))
        await eventually(lambda: len(consumer.of("trade")) >= seen + 10, "new trades")
        status = consumer.status
    assert status["reconnects"]["closed"] == 1
    for symbol in SYMBOLS:
        ids = [t["trade_id"] for t in consumer.of("trade", symbol)]
        assert len(ids) == len(set(ids)), f"{symbol} has duplicate trade ids"
        assert ids == sorted(ids)
    assert sum(status["symbols"][s]["duplicate_trades_dropped"] for s in SYMBOLS) > 0


async def test_refused_connections_retry_forever_until_the_server_appears(
    metrics: Metrics,
) -> None:
    """With nothing listening, refusals are counted and retried; once a server starts
    on that port, records flow."""
    port = free_port()
    feed = KrakenFeed(
        feed_config(),
        metrics,
        url=f"ws://127.0.0.1:{port}/v2",
        backoff_initial=0.02,
        backoff_max=0.1,
    )
    async with consuming(feed) as consumer:
        await eventually(lambda: consumer.status["reconnects"]["refused"] >= 3, "three refusals")
        assert consumer.status["connected"] is False
        async with KrakenTestServer(port=port, rate=40):
            await eventually(lambda: len(consumer.of("book")) >= 3, "books once the server is up")
    assert sample(metrics, "cryptorun_ingest_reconnects_total", cause="refused") >= 3


async def test_closing_the_iterator_closes_the_connection(
    server: KrakenTestServer, metrics: Metrics
) -> None:
    """aclose() on records() releases the WebSocket: the server sees it go away."""
    feed = make_feed(server, metrics)
    records = feed.records()
    await anext(records)
    assert server.open_connections == 1
    await records.aclose()
    await eventually(lambda: server.open_connections == 0, "the server to see the close")
    assert feed.status()["connected"] is False


async def test_slow_consumer_is_not_mistaken_for_silence(
    server: KrakenTestServer, metrics: Metrics
) -> None:
    """A consumer pausing longer than heartbeat_timeout leaves frames queued, which
    is not a dead connection: no reconnect, and the stream continues."""
    feed = make_feed(server, metrics, heartbeat_timeout=SHORT_SILENCE)
    records = feed.records()
    try:
        await anext(records)
        await asyncio.sleep(2.5 * SHORT_SILENCE)  # longer than heartbeat_timeout, no pulls
        for _ in range(50):
            await anext(records)
        assert feed.status()["reconnects"]["timeout"] == 0
        assert server.connections_total == 1
    finally:
        await records.aclose()


async def test_one_iteration_at_a_time(server: KrakenTestServer, metrics: Metrics) -> None:
    """A second concurrent records() iteration is refused (they would share state)."""
    feed = make_feed(server, metrics)
    first = feed.records()
    try:
        await anext(first)
        second = feed.records()
        with pytest.raises(RuntimeError, match="already being iterated"):
            await anext(second)
    finally:
        await first.aclose()


def test_invalid_configuration_is_refused_up_front(metrics: Metrics) -> None:
    """A depth Kraken does not allow, or a non-WebSocket URL, raises IngestError at once."""
    with pytest.raises(IngestError, match="book_depth"):
        KrakenFeed(feed_config(book_depth=20), metrics)
    with pytest.raises(IngestError, match="ws://"):
        KrakenFeed(feed_config(), metrics, url="https://ws.kraken.com/v2")
