"""The Kraken v2 protocol state machine: frames in, records and requests out.

:class:`KrakenHandler` owns everything that survives a reconnect (instrument
precisions, trade id sequences, per-symbol health) and everything that belongs
to one connection (order books, which book subscriptions were sent). It does no
I/O: the connector feeds it frames and sends the requests it queues, which
keeps the protocol logic testable without sockets and the connector about
connections only.

Subscription flow on every connection:

1. ``instrument`` (for each pair's ``price_precision`` / ``qty_precision``) and
   ``trade`` with ``snapshot: true`` are requested at once;
2. ``book`` is requested for a symbol as soon as its precisions are known (at
   once after a reconnect, after the instrument snapshot on the first
   connection), because a book whose checksum cannot be verified is useless.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from itertools import count
from typing import Any, Final

import structlog

from cryptorun_daemon.hot.feed import MarketRecord
from cryptorun_daemon.ingest.kraken.book import OrderBook, Precision
from cryptorun_daemon.ingest.kraken.messages import (
    BookMessage,
    FrameError,
    Heartbeat,
    InstrumentUpdate,
    Message,
    MethodReply,
    OtherMessage,
    StatusUpdate,
    TradeMessage,
    decode_frame,
    subscribe_request,
    unsubscribe_request,
)
from cryptorun_daemon.ingest.kraken.normalise import book_record, trade_record
from cryptorun_daemon.ingest.kraken.trades import TradeSequence, TradeVerdict
from cryptorun_daemon.metrics import Metrics
from cryptorun_daemon.timefmt import parse_rfc3339_ns

log = structlog.get_logger("cryptorun.ingest.kraken")

MESSAGE_CHANNELS: Final = (
    "book", "trade", "instrument", "status", "heartbeat",
    "subscribe", "unsubscribe", "pong", "other", "invalid",
)  # fmt: skip
"""Bounded values of the ``channel`` label of ``cryptorun_ingest_messages_total``."""

ERROR_KINDS: Final = (
    "non_json", "malformed", "subscribe_error", "unsubscribe_error", "request_error",
    "unknown_symbol", "no_precision",
)  # fmt: skip
"""Bounded values of the ``kind`` label of ``cryptorun_ingest_errors_total``."""

RESUBSCRIBE_BACKOFF_MAX: Final = 60.0
"""Cap on the pause between book resubscribes of a symbol whose snapshots keep failing."""

_RECENT_ERRORS: Final = 20
_REMEMBERED_REQUESTS: Final = 1000


@dataclass
class SymbolHealth:
    """What ``status()`` reports per symbol; survives reconnects."""

    trades: TradeSequence = field(default_factory=TradeSequence)
    checksum_failures: int = 0
    suspect: bool = False
    suspect_records: int = 0
    resubscribes: int = 0
    subscribed: dict[str, bool] = field(default_factory=dict)
    # Book resubscribe scheduling: due time on the connector's monotonic clock,
    # and how many snapshots in a row failed (drives the backoff).
    resubscribe_at: float | None = None
    failed_snapshots: int = 0

    def as_status(self) -> dict[str, Any]:
        gap = self.trades.last_gap
        return {
            "last_trade_id": self.trades.last_id,
            "trade_id_gaps": self.trades.gaps,
            "missing_trade_ids": self.trades.missing_ids,
            "last_gap": list(gap) if gap else None,
            "duplicate_trades_dropped": self.trades.duplicates,
            "checksum_failures": self.checksum_failures,
            "book_suspect": self.suspect,
            "suspect_records": self.suspect_records,
            "book_resubscribes": self.resubscribes,
            "subscribed": dict(sorted(self.subscribed.items())),
        }


class KrakenHandler:
    """Decodes frames, maintains books and trade sequences, emits records.

    Error handling: nothing a server sends makes :meth:`handle_frame` raise.
    Unparseable frames and error replies are logged and counted in
    ``cryptorun_ingest_errors_total{kind}``; a checksum mismatch is counted,
    marks the book suspect and queues a resubscribe of that symbol's book.
    """

    def __init__(
        self,
        *,
        venue: str,
        symbols: Sequence[str],
        depth: int,
        metrics: Metrics,
    ) -> None:
        self.venue = venue
        self.symbols = tuple(symbols)
        self.depth = depth
        self._metrics = metrics
        self._health = {symbol: SymbolHealth() for symbol in self.symbols}
        self._precisions: dict[str, Precision] = {}
        self._req_ids = count(1)
        self._outbox: list[str] = []
        # Kraken's error replies name the symbol but not the channel; the
        # req_id of the request tells us which channel was refused.
        self._request_channels: dict[int, str] = {}
        self._books: dict[str, OrderBook] = {}
        self._book_requested: set[str] = set()
        self._unknown_reported: set[str] = set()
        self.system_status: str | None = None
        self.market_data_seen = False
        self._now = 0.0
        self.recent_errors: deque[dict[str, Any]] = deque(maxlen=_RECENT_ERRORS)
        for symbol in self.symbols:
            metrics.ingest_checksum_failures_total.labels(venue=venue, symbol=symbol)
            metrics.ingest_trade_id_gaps_total.labels(venue=venue, symbol=symbol)

    # --- connection lifecycle -------------------------------------------------------

    def start_session(self) -> None:
        """Forget per-connection state and queue the subscriptions for a new connection."""
        self._books.clear()
        self._book_requested.clear()
        self._outbox.clear()
        self._request_channels.clear()
        self._unknown_reported.clear()
        self.market_data_seen = False
        for health in self._health.values():
            health.subscribed.clear()
            health.resubscribe_at = None
        self._outbox.append(
            subscribe_request("instrument", self._next_id("instrument"), snapshot=True)
        )
        self._outbox.append(
            subscribe_request("trade", self._next_id("trade"), self.symbols, snapshot=True)
        )
        self._request_books(s for s in self.symbols if s in self._precisions)

    def take_requests(self, now: float) -> list[str]:
        """Requests to send now (queued subscriptions plus book resubscribes that are due)."""
        for symbol, health in self._health.items():
            if health.resubscribe_at is not None and health.resubscribe_at <= now:
                health.resubscribe_at = None
                health.resubscribes += 1
                log.info("kraken book resubscribe", venue=self.venue, symbol=symbol)
                self._outbox.append(
                    unsubscribe_request("book", self._next_id("book"), [symbol], depth=self.depth)
                )
                self._outbox.append(
                    subscribe_request(
                        "book", self._next_id("book"), [symbol], depth=self.depth, snapshot=True
                    )
                )
        requests, self._outbox = self._outbox, []
        return requests

    def next_wakeup(self) -> float | None:
        """Earliest monotonic time at which :meth:`take_requests` has something new."""
        due = [h.resubscribe_at for h in self._health.values() if h.resubscribe_at is not None]
        return min(due) if due else None

    # --- frames ---------------------------------------------------------------------

    def handle_frame(self, frame: str | bytes, *, ingest_ts: int, now: float) -> list[MarketRecord]:
        """Decode and apply one frame; return the records it produced.

        ``ingest_ts`` is the local receive time (ns since the epoch) and
        ``now`` the connector's monotonic reading, used to schedule resubscribes.
        """
        self._now = now
        try:
            message = decode_frame(frame)
        except FrameError as exc:
            self._count_message("invalid")
            self._error(exc.kind, str(exc), frame=_preview(frame))
            return []
        self._count_message(_channel_label(message))
        try:
            return self._dispatch(message, ingest_ts=ingest_ts, now=now)
        except ValueError as exc:  # e.g. a trade timestamp that is not RFC 3339
            self._error("malformed", str(exc), frame=_preview(frame))
            return []

    def _dispatch(self, message: Message, *, ingest_ts: int, now: float) -> list[MarketRecord]:
        if isinstance(message, BookMessage):
            return self._on_book(message, ingest_ts=ingest_ts, now=now)
        if isinstance(message, TradeMessage):
            return self._on_trades(message, ingest_ts=ingest_ts)
        if isinstance(message, InstrumentUpdate):
            self._on_instrument(message)
        elif isinstance(message, MethodReply):
            self._on_reply(message)
        elif isinstance(message, StatusUpdate):
            if message.system != "online":
                log.warning("kraken engine not online", venue=self.venue, system=message.system)
            self.system_status = message.system
        return []

    def _on_instrument(self, message: InstrumentUpdate) -> None:
        ready = []
        for symbol in self.symbols:
            precision = message.precisions.get(symbol)
            if precision is None:
                if message.type == "snapshot" and symbol not in self._unknown_reported:
                    self._unknown_reported.add(symbol)
                    self._error(
                        "unknown_symbol", "symbol not in the instrument snapshot", symbol=symbol
                    )
                continue
            if self._precisions.get(symbol) != precision:
                self._precisions[symbol] = precision
                book = self._books.get(symbol)
                if book is not None:
                    book.precision = precision
            ready.append(symbol)
        self._request_books(ready)

    def _request_books(self, symbols: Iterable[str]) -> None:
        wanted = [s for s in symbols if s not in self._book_requested]
        if wanted:
            self._book_requested.update(wanted)
            self._outbox.append(
                subscribe_request(
                    "book", self._next_id("book"), wanted, depth=self.depth, snapshot=True
                )
            )

    def _on_reply(self, reply: MethodReply) -> None:
        if reply.channel is None and reply.req_id is not None:
            channel = self._request_channels.get(reply.req_id)
            reply = replace(reply, channel=channel)
        health = self._health.get(reply.symbol) if reply.symbol else None
        if not reply.success:
            kind = {"subscribe": "subscribe_error", "unsubscribe": "unsubscribe_error"}.get(
                reply.method, "request_error"
            )
            self._error(
                kind,
                reply.error or "request rejected",
                method=reply.method,
                channel=reply.channel,
                symbol=reply.symbol,
                req_id=reply.req_id,
            )
            if health is not None and reply.channel and reply.method == "subscribe":
                health.subscribed[reply.channel] = False
                if reply.channel == "book" and health.suspect:
                    # The repair itself was refused: try again later, backing off.
                    health.failed_snapshots += 1
                    health.resubscribe_at = self._now + _resubscribe_delay(health)
            return
        if health is not None and reply.channel:
            health.subscribed[reply.channel] = reply.method == "subscribe"

    def _on_book(self, message: BookMessage, *, ingest_ts: int, now: float) -> list[MarketRecord]:
        symbol = message.symbol
        health = self._health.get(symbol)
        if health is None:
            return []
        book = self._books.get(symbol)
        if message.type == "snapshot":
            precision = self._precisions.get(symbol)
            if precision is None:
                self._error(
                    "no_precision", "book snapshot before instrument precisions", symbol=symbol
                )
                return []
            book = OrderBook(depth=self.depth, precision=precision)
            self._books[symbol] = book
            book.apply_snapshot(message.bids, message.asks)
        elif book is None:
            # An update with no snapshot to apply it to (e.g. in flight while a
            # resubscribe was unsubscribing): nothing sound can be built from it.
            return []
        else:
            book.apply_update(message.bids, message.asks)
        self.market_data_seen = True

        matches = book.checksum() == message.checksum
        if message.type == "snapshot" and matches:
            if health.suspect:
                log.info(
                    "kraken book repaired by a fresh snapshot", venue=self.venue, symbol=symbol
                )
            health.suspect = False
            health.failed_snapshots = 0
            health.resubscribe_at = None
        elif not matches and (message.type == "snapshot" or not health.suspect):
            self._on_mismatch(symbol, health, message, book, now=now)
        if health.suspect:
            health.suspect_records += 1
        ts = parse_rfc3339_ns(message.timestamp) if message.timestamp else ingest_ts
        return [
            book_record(
                book,
                venue=self.venue,
                symbol=symbol,
                ts=ts,
                checksum=message.checksum,
                suspect=health.suspect,
                ingest_ts=ingest_ts,
            )
        ]

    def _on_mismatch(
        self,
        symbol: str,
        health: SymbolHealth,
        message: BookMessage,
        book: OrderBook,
        *,
        now: float,
    ) -> None:
        health.checksum_failures += 1
        health.suspect = True
        self._metrics.ingest_checksum_failures_total.labels(venue=self.venue, symbol=symbol).inc()
        if message.type == "snapshot":
            health.failed_snapshots += 1
        delay = _resubscribe_delay(health)
        health.resubscribe_at = now + delay
        log.warning(
            "kraken book checksum mismatch; resubscribing",
            venue=self.venue,
            symbol=symbol,
            message_type=message.type,
            expected=message.checksum,
            computed=book.checksum(),
            resubscribe_in_seconds=delay,
        )

    def _on_trades(self, message: TradeMessage, *, ingest_ts: int) -> list[MarketRecord]:
        records = []
        for trade in message.trades:
            health = self._health.get(trade.symbol)
            if health is None:
                continue
            self.market_data_seen = True
            try:
                record = trade_record(trade, venue=self.venue, ingest_ts=ingest_ts)
            except ValueError as exc:  # one bad timestamp must not cost the other trades
                self._error("malformed", str(exc), symbol=trade.symbol, trade_id=trade.trade_id)
                continue
            verdict = health.trades.observe(trade.trade_id)
            if verdict is TradeVerdict.DUPLICATE:
                continue
            if verdict is TradeVerdict.GAP:
                self._metrics.ingest_trade_id_gaps_total.labels(
                    venue=self.venue, symbol=trade.symbol
                ).inc()
                log.warning(
                    "kraken trade_id gap",
                    venue=self.venue,
                    symbol=trade.symbol,
                    missing_from=health.trades.last_gap and health.trades.last_gap[0],
                    missing_to=health.trades.last_gap and health.trades.last_gap[1],
                    message_type=message.type,
                )
            records.append(record)
        return records

    # --- status and helpers ----------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Per-symbol health, precisions and recent errors (JSON-serialisable)."""
        return {
            "system": self.system_status,
            "symbols": {symbol: h.as_status() for symbol, h in self._health.items()},
            "precisions": {
                symbol: {"price": p.price, "qty": p.qty}
                for symbol, p in sorted(self._precisions.items())
            },
            "recent_errors": list(self.recent_errors),
        }

    def _next_id(self, channel: str) -> int:
        req_id = next(self._req_ids)
        self._request_channels[req_id] = channel
        if len(self._request_channels) > _REMEMBERED_REQUESTS:  # oldest first (insertion order)
            del self._request_channels[next(iter(self._request_channels))]
        return req_id

    def _count_message(self, channel: str) -> None:
        self._metrics.ingest_messages_total.labels(venue=self.venue, channel=channel).inc()

    def _error(self, kind: str, detail: str, **context: Any) -> None:
        self._metrics.ingest_errors_total.labels(venue=self.venue, kind=kind).inc()
        self.recent_errors.append({"kind": kind, "detail": detail, **context})
        log.warning("kraken ingest error", venue=self.venue, kind=kind, detail=detail, **context)


def _resubscribe_delay(health: SymbolHealth) -> float:
    """Immediate for the first repair; if fresh snapshots keep failing (wrong
    precisions, a broken upstream) back off so we never hammer Kraken."""
    if not health.failed_snapshots:
        return 0.0
    return min(RESUBSCRIBE_BACKOFF_MAX, 2.0 ** (health.failed_snapshots - 1))


def _channel_label(message: Message) -> str:
    if isinstance(message, MethodReply):
        return message.method if message.method in MESSAGE_CHANNELS else "other"
    if isinstance(message, OtherMessage):
        return "other"
    return {
        BookMessage: "book",
        TradeMessage: "trade",
        InstrumentUpdate: "instrument",
        StatusUpdate: "status",
        Heartbeat: "heartbeat",
    }[type(message)]


def _preview(frame: str | bytes) -> str:
    text = frame if isinstance(frame, str) else frame.decode("utf-8", "replace")
    return text[:80]
