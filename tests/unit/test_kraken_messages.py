"""Kraken v2 frames → typed messages, trade id bookkeeping, and the handler's state machine.

The handler tests feed real frames (as the server would send them) to
:class:`KrakenHandler` without sockets: the protocol logic is pure.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from cryptorun_daemon.ingest.kraken.checksum import book_checksum
from cryptorun_daemon.ingest.kraken.handler import KrakenHandler
from cryptorun_daemon.ingest.kraken.messages import (
    BookMessage,
    FrameError,
    Heartbeat,
    InstrumentUpdate,
    MethodReply,
    OtherMessage,
    StatusUpdate,
    TradeMessage,
    decode_frame,
    ns_to_rfc3339,
    ping_request,
    subscribe_request,
    unsubscribe_request,
)
from cryptorun_daemon.ingest.kraken.trades import TradeSequence, TradeVerdict
from cryptorun_daemon.metrics import Metrics
from cryptorun_daemon.timefmt import parse_rfc3339_ns

D = Decimal

# --- decoding ------------------------------------------------------------------------


def test_book_update_keeps_exact_decimals() -> None:
    """Book prices are parsed as Decimal with the digits Kraken sent (no float rounding)."""
    message = decode_frame(
        '{"channel":"book","type":"update","data":[{"symbol":"MATIC/USD",'
        '"bids":[{"price":0.5657,"qty":1500}],"asks":[{"price":0.5668,"qty":0}],'
        '"checksum":2439117997,"timestamp":"2023-10-06T17:35:55.440295Z"}]}'
    )
    assert message == BookMessage(
        type="update", symbol="MATIC/USD",
        bids=((D("0.5657"), D(1500)),), asks=((D("0.5668"), D(0)),),
        checksum=2439117997, timestamp="2023-10-06T17:35:55.440295Z",
    )  # fmt: skip


def test_book_snapshot_without_timestamp() -> None:
    """A snapshot may come without a timestamp; that is not an error."""
    message = decode_frame(
        '{"channel":"book","type":"snapshot","data":[{"symbol":"BTC/USD",'
        '"bids":[],"asks":[],"checksum":0}]}'
    )
    assert isinstance(message, BookMessage)
    assert message.timestamp is None


def test_trade_message() -> None:
    """Trades decode with side, exact price/qty, integer trade_id and timestamp."""
    message = decode_frame(json.dumps({
        "channel": "trade", "type": "snapshot",
        "data": [{"symbol": "MATIC/USD", "side": "buy", "price": 0.5147, "qty": 6423.46326,
                  "ord_type": "limit", "trade_id": 4665846,
                  "timestamp": "2023-09-25T07:48:36.925533Z"}],
    }))  # fmt: skip
    assert isinstance(message, TradeMessage)
    (trade,) = message.trades
    assert (trade.side, trade.price, trade.qty, trade.trade_id) == (
        "buy",
        D("0.5147"),
        D("6423.46326"),
        4665846,
    )


def test_instrument_snapshot_gives_precisions() -> None:
    """The instrument channel yields each pair's price and qty precision."""
    message = decode_frame(json.dumps({
        "channel": "instrument", "type": "snapshot",
        "data": {"assets": [], "pairs": [
            {"symbol": "BTC/USD", "price_precision": 1, "qty_precision": 8, "status": "online"},
        ]},
    }))  # fmt: skip
    assert isinstance(message, InstrumentUpdate)
    assert message.precisions["BTC/USD"].price == 1
    assert message.precisions["BTC/USD"].qty == 8


def test_acks_errors_status_heartbeat_and_pong() -> None:
    """Method replies, status, heartbeat and unknown channels decode to their own types."""
    ack = decode_frame(
        '{"method":"subscribe","result":{"channel":"book","depth":10,'
        '"snapshot":true,"symbol":"ALGO/USD"},"success":true,"req_id":7}'
    )
    assert ack == MethodReply(
        method="subscribe", success=True, channel="book", symbol="ALGO/USD", error=None, req_id=7
    )
    error = decode_frame(
        '{"error":"Currency pair not supported XBT/USDC","method":"subscribe",'
        '"req_id":8,"success":false,"symbol":"XBT/USDC"}'
    )
    assert isinstance(error, MethodReply)
    assert (error.success, error.symbol, error.error) == (
        False,
        "XBT/USDC",
        "Currency pair not supported XBT/USDC",
    )
    pong = decode_frame('{"method":"pong","req_id":101,"time_in":"2023-09-24T14:10:23.799685Z"}')
    assert isinstance(pong, MethodReply)
    assert pong.success
    status = decode_frame(
        '{"channel":"status","type":"update","data":[{"api_version":"v2",'
        '"connection_id":13834774380200032777,"system":"online"}]}'
    )
    assert status == StatusUpdate(system="online", connection_id=13834774380200032777)
    assert decode_frame('{"channel":"heartbeat"}') == Heartbeat()
    assert decode_frame('{"channel":"ticker","type":"update","data":[]}') == OtherMessage("ticker")


@pytest.mark.parametrize(
    ("frame", "kind"),
    [
        ("<html>502 Bad Gateway</html>", "non_json"),
        ("", "non_json"),
        ("[1, 2]", "non_json"),
        (b"\xff\xfe", "non_json"),
        ('{"foo": 1}', "malformed"),
        ('{"channel":"book","type":"update","data":[]}', "malformed"),
        ('{"channel":"book","type":"update","data":[{"symbol":"A/B","checksum":-1}]}', "malformed"),
        (
            '{"channel":"book","type":"update","data":[{"symbol":"A/B","checksum":1,'
            '"bids":[{"price":-1,"qty":1}]}]}',
            "malformed",
        ),
        (
            '{"channel":"trade","type":"update","data":[{"symbol":"A/B","side":"up",'
            '"price":1,"qty":1,"trade_id":1,"timestamp":"x"}]}',
            "malformed",
        ),
        (
            '{"channel":"trade","type":"update","data":[{"symbol":"A/B","side":"buy",'
            '"price":1,"qty":1,"trade_id":1.5,"timestamp":"x"}]}',
            "malformed",
        ),
        ('{"channel":"book","type":"delta","data":[{"symbol":"A/B","checksum":1}]}', "malformed"),
    ],
)
def test_bad_frames_raise_frame_error_with_a_bounded_kind(frame: str | bytes, kind: str) -> None:
    """Anything unparseable raises FrameError whose kind is the metric label."""
    with pytest.raises(FrameError) as caught:
        decode_frame(frame)
    assert caught.value.kind == kind


# --- timestamps and requests ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("2025-09-01T00:00:00Z", 1_756_684_800_000_000_000),
        ("2025-09-01T00:00:00.123456Z", 1_756_684_800_123_456_000),
        ("2025-09-01T00:00:00.123456789Z", 1_756_684_800_123_456_789),
        ("2025-09-01T02:00:00.5+02:00", 1_756_684_800_500_000_000),
    ],
)
def test_rfc3339_to_ns(text: str, ns: int) -> None:
    """Kraken's RFC 3339 timestamps become integer nanoseconds, keeping sub-µs digits."""
    assert parse_rfc3339_ns(text) == ns


def test_rfc3339_rejects_naive_and_garbage() -> None:
    """A timestamp without an offset, or not a timestamp at all, is refused."""
    for text in ("2025-09-01T00:00:00", "yesterday"):
        with pytest.raises(ValueError, match="RFC 3339"):
            parse_rfc3339_ns(text)


def test_ns_to_rfc3339_round_trips_microseconds() -> None:
    """Server-side formatting matches Kraken's microsecond ``Z`` form."""
    assert ns_to_rfc3339(1_756_684_800_123_456_000) == "2025-09-01T00:00:00.123456Z"


def test_request_shapes() -> None:
    """Requests carry method, params (channel, symbol, depth, snapshot) and req_id."""
    assert json.loads(subscribe_request("book", 3, ["BTC/USD"], depth=10, snapshot=True)) == {
        "method": "subscribe",
        "params": {"channel": "book", "symbol": ["BTC/USD"], "depth": 10, "snapshot": True},
        "req_id": 3,
    }
    assert json.loads(subscribe_request("instrument", 1)) == {
        "method": "subscribe",
        "params": {"channel": "instrument"},
        "req_id": 1,
    }
    assert json.loads(unsubscribe_request("book", 4, ["ETH/USD"], depth=25))["params"] == {
        "channel": "book",
        "symbol": ["ETH/USD"],
        "depth": 25,
    }
    assert json.loads(ping_request(9)) == {"method": "ping", "req_id": 9}


# --- trade id sequence ------------------------------------------------------------------


def test_trade_sequence_classifies_ids() -> None:
    """First id sets the baseline; +1 is next; a jump is one gap; replays are duplicates."""
    seq = TradeSequence()
    verdicts = [seq.observe(i) for i in (10, 11, 15, 12, 15, 16)]
    assert verdicts == [
        TradeVerdict.FIRST, TradeVerdict.NEXT, TradeVerdict.GAP,
        TradeVerdict.DUPLICATE, TradeVerdict.DUPLICATE, TradeVerdict.NEXT,
    ]  # fmt: skip
    assert (seq.last_id, seq.gaps, seq.missing_ids, seq.duplicates) == (16, 1, 3, 2)
    assert seq.last_gap == (12, 14)


# --- handler ------------------------------------------------------------------------------

TS = "2025-09-01T00:00:00.000001Z"


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, {"venue": "kraken", **labels}) or 0.0


def book_frame(
    kind: str,
    bids: list[tuple[str, str]],
    asks: list[tuple[str, str]],
    checksum: int,
    symbol: str = "BTC/USD",
) -> str:
    def side(levels: list[tuple[str, str]]) -> list[dict[str, Any]]:
        return [{"price": float(p), "qty": float(q)} for p, q in levels]

    return json.dumps({"channel": "book", "type": kind, "data": [{
        "symbol": symbol, "bids": side(bids), "asks": side(asks), "checksum": checksum,
        "timestamp": TS}]})  # fmt: skip


def trade_frame(kind: str, ids: list[int], symbol: str = "BTC/USD") -> str:
    return json.dumps({"channel": "trade", "type": kind, "data": [
        {"symbol": symbol, "side": "sell", "price": 60000.5, "qty": 0.01, "ord_type": "market",
         "trade_id": i, "timestamp": TS} for i in ids]})  # fmt: skip


def crc(bids: list[tuple[str, str]], asks: list[tuple[str, str]]) -> int:
    def dec(levels: list[tuple[str, str]]) -> list[tuple[Decimal, Decimal]]:
        return [(D(p), D(q)) for p, q in levels]

    return book_checksum(dec(asks), dec(bids), price_precision=1, qty_precision=8)


INSTRUMENT = json.dumps({"channel": "instrument", "type": "snapshot", "data": {"pairs": [
    {"symbol": "BTC/USD", "price_precision": 1, "qty_precision": 8}]}})  # fmt: skip


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


@pytest.fixture
def handler(metrics: Metrics) -> KrakenHandler:
    h = KrakenHandler(venue="kraken", symbols=["BTC/USD", "ETH/USD"], depth=10, metrics=metrics)
    h.start_session()
    return h


def feed(handler: KrakenHandler, frame: str, now: float = 0.0) -> list[Any]:
    return handler.handle_frame(frame, ingest_ts=42, now=now)


def test_session_subscribes_instrument_and_trades_then_books(handler: KrakenHandler) -> None:
    """A new session asks for instrument and trades; books follow once precisions are known."""
    first = [json.loads(r) for r in handler.take_requests(0.0)]
    assert [(r["params"]["channel"], r["params"].get("snapshot")) for r in first] == [
        ("instrument", True),
        ("trade", True),
    ]
    assert first[1]["params"]["symbol"] == ["BTC/USD", "ETH/USD"]
    feed(handler, INSTRUMENT)
    (book,) = [json.loads(r) for r in handler.take_requests(0.0)]
    assert book["params"] == {
        "channel": "book",
        "symbol": ["BTC/USD"],
        "depth": 10,
        "snapshot": True,
    }
    handler.start_session()
    again = [json.loads(r)["params"]["channel"] for r in handler.take_requests(0.0)]
    assert again == ["instrument", "trade", "book"], "known precisions: books at once"


def test_instrument_without_a_symbol_is_reported(handler: KrakenHandler, metrics: Metrics) -> None:
    """A configured symbol missing from the instrument snapshot is a counted error."""
    feed(handler, INSTRUMENT)
    assert sample(metrics, "cryptorun_ingest_errors_total", kind="unknown_symbol") == 1


def test_checksum_mismatch_marks_suspect_and_resubscribes_only_that_symbol(
    handler: KrakenHandler, metrics: Metrics
) -> None:
    """Mismatch → counted once, records suspect, unsubscribe+subscribe book; snapshot repairs."""
    feed(handler, INSTRUMENT)
    handler.take_requests(0.0)
    bids, asks = [("100.0", "1")], [("101.0", "2")]
    (rec,) = feed(handler, book_frame("snapshot", bids, asks, crc(bids, asks)))
    assert rec.fields["suspect"] is False
    (bad,) = feed(handler, book_frame("update", [("100.0", "3")], [], 12345), now=1.0)
    assert bad.fields["suspect"] is True
    (still,) = feed(handler, book_frame("update", [("99.0", "1")], [], 999), now=1.1)
    assert still.fields["suspect"] is True
    assert sample(metrics, "cryptorun_ingest_checksum_failures_total", symbol="BTC/USD") == 1
    requests = [json.loads(r) for r in handler.take_requests(1.2)]
    assert [(r["method"], r["params"]["symbol"]) for r in requests] == [
        ("unsubscribe", ["BTC/USD"]),
        ("subscribe", ["BTC/USD"]),
    ]
    (fresh,) = feed(handler, book_frame("snapshot", bids, asks, crc(bids, asks)))
    assert fresh.fields["suspect"] is False
    status = handler.status()["symbols"]["BTC/USD"]
    assert (status["checksum_failures"], status["book_suspect"], status["suspect_records"]) == (
        1,
        False,
        2,
    )


def test_failing_snapshots_back_off_resubscribes(handler: KrakenHandler) -> None:
    """When fresh snapshots keep mismatching, resubscribes wait longer each time."""
    feed(handler, INSTRUMENT)
    handler.take_requests(0.0)
    feed(handler, book_frame("snapshot", [("1.0", "1")], [], 1), now=10.0)
    assert handler.next_wakeup() == 10.0 + 1.0
    assert handler.take_requests(10.5) == []
    assert len(handler.take_requests(11.0)) == 2


def test_book_record_fields(handler: KrakenHandler) -> None:
    """A book record carries exchange ts, best-first float levels, checksum and ingest_ts."""
    feed(handler, INSTRUMENT)
    bids, asks = [("100.0", "1"), ("99.5", "0.5")], [("101.0", "2")]
    (rec,) = feed(handler, book_frame("snapshot", bids, asks, crc(bids, asks)))
    assert rec.dataset == "book"
    assert rec.fields == {
        "ts": parse_rfc3339_ns(TS), "venue": "kraken", "symbol": "BTC/USD",
        "bids_px": [100.0, 99.5], "bids_qty": [1.0, 0.5], "asks_px": [101.0],
        "asks_qty": [2.0], "checksum": crc(bids, asks), "suspect": False, "ingest_ts": 42,
    }  # fmt: skip


def test_trades_gap_counted_and_replayed_snapshot_deduplicated(
    handler: KrakenHandler, metrics: Metrics
) -> None:
    """A trade_id jump is counted; a snapshot after reconnect drops already-seen ids."""
    records = feed(handler, trade_frame("snapshot", [1, 2, 3]))
    assert [r.fields["trade_id"] for r in records] == [1, 2, 3]
    assert records[0].fields == {
        "ts": parse_rfc3339_ns(TS), "venue": "kraken", "symbol": "BTC/USD", "side": "sell",
        "price": 60000.5, "qty": 0.01, "trade_id": 1, "ingest_ts": 42,
    }  # fmt: skip
    feed(handler, trade_frame("update", [6]))
    assert sample(metrics, "cryptorun_ingest_trade_id_gaps_total", symbol="BTC/USD") == 1
    handler.start_session()
    replay = feed(handler, trade_frame("snapshot", [4, 5, 6, 7]))
    assert [r.fields["trade_id"] for r in replay] == [7]
    status = handler.status()["symbols"]["BTC/USD"]
    assert (
        status["last_trade_id"],
        status["trade_id_gaps"],
        status["missing_trade_ids"],
        status["duplicate_trades_dropped"],
    ) == (7, 1, 2, 3)


def test_error_ack_and_garbage_are_counted_not_raised(
    handler: KrakenHandler, metrics: Metrics
) -> None:
    """Error replies and non-JSON frames produce no records, only counted errors."""
    assert (
        feed(
            handler,
            '{"error":"Currency pair not supported ETH/USD","method":"subscribe",'
            '"success":false,"symbol":"ETH/USD","req_id":2}',
        )
        == []
    )
    assert feed(handler, "upstream proxy says hello") == []
    assert (
        feed(
            handler,
            '{"channel":"trade","type":"update","data":[{"symbol":"BTC/USD",'
            '"side":"buy","price":1,"qty":1,"trade_id":1,"timestamp":"never"}]}',
        )
        == []
    )
    assert sample(metrics, "cryptorun_ingest_errors_total", kind="subscribe_error") == 1
    assert sample(metrics, "cryptorun_ingest_errors_total", kind="non_json") == 1
    assert sample(metrics, "cryptorun_ingest_errors_total", kind="malformed") == 1
    assert sample(metrics, "cryptorun_ingest_messages_total", channel="invalid") == 1
    assert handler.status()["symbols"]["ETH/USD"]["subscribed"] == {"trade": False}
    assert handler.status()["symbols"]["BTC/USD"]["last_trade_id"] is None


def test_updates_for_unknown_symbols_or_without_snapshot_are_ignored(
    handler: KrakenHandler,
) -> None:
    """Data for symbols we did not ask for, or updates before any snapshot, yield nothing."""
    feed(handler, INSTRUMENT)
    assert feed(handler, book_frame("update", [("1.0", "1")], [], 1)) == []
    assert feed(handler, trade_frame("update", [1], symbol="DOGE/USD")) == []
