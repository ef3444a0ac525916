"""Kraken messages → :class:`MarketRecord` in the ``trade`` and ``book`` schemas.

Field conventions (``cryptorun_daemon.hot.feed``): ``ts`` is the exchange time
and ``ingest_ts`` the local receive time, both integer nanoseconds since the
epoch (UTC); ``venue`` is the configured venue name; ``symbol`` keeps Kraken's
``BASE/QUOTE`` form; prices and quantities become ``float`` only here, after
the checksum has been verified on exact decimals.
"""

from __future__ import annotations

from cryptorun_daemon.hot.feed import MarketRecord
from cryptorun_daemon.ingest.kraken.book import OrderBook
from cryptorun_daemon.ingest.kraken.messages import Trade
from cryptorun_daemon.timefmt import parse_rfc3339_ns


def trade_record(trade: Trade, *, venue: str, ingest_ts: int) -> MarketRecord:
    """One ``trade`` record.

    Error handling: raises ``ValueError`` when the trade's timestamp is not
    RFC 3339 (the caller counts it as a malformed frame).
    """
    return MarketRecord(
        dataset="trade",
        fields={
            "ts": parse_rfc3339_ns(trade.timestamp),
            "venue": venue,
            "symbol": trade.symbol,
            "side": trade.side,
            "price": float(trade.price),
            "qty": float(trade.qty),
            "trade_id": trade.trade_id,
            "ingest_ts": ingest_ts,
        },
    )


def book_record(
    book: OrderBook,
    *,
    venue: str,
    symbol: str,
    ts: int,
    checksum: int,
    suspect: bool,
    ingest_ts: int,
) -> MarketRecord:
    """One ``book`` record: the top ``book.depth`` levels per side, best first.

    ``checksum`` is Kraken's value for this state; ``suspect`` is true while the
    local book is known to disagree with Kraken's (between a checksum mismatch
    and the fresh snapshot that repairs it).
    """
    bids = book.bids(book.depth)
    asks = book.asks(book.depth)
    return MarketRecord(
        dataset="book",
        fields={
            "ts": ts,
            "venue": venue,
            "symbol": symbol,
            "bids_px": [float(price) for price, _ in bids],
            "bids_qty": [float(qty) for _, qty in bids],
            "asks_px": [float(price) for price, _ in asks],
            "asks_qty": [float(qty) for _, qty in asks],
            "checksum": checksum,
            "suspect": suspect,
            "ingest_ts": ingest_ts,
        },
    )
