"""Kraken WebSocket v2 frames: decode what the server sends, build what we send.

Decoding turns a text frame into one typed message or raises
:class:`FrameError` with a bounded ``kind`` (the ``cryptorun_ingest_errors_total``
label). Numbers are parsed with ``parse_float=Decimal`` so book prices keep
the exact digits Kraken sent (the checksum depends on them).

Shapes (Kraken v2 API reference, ``wss://ws.kraken.com/v2``):

* method replies: ``{"method": "subscribe"|"unsubscribe"|"pong", "success": bool,
  "result": {"channel", "symbol", ...}, "error": str, "req_id": int, "time_in",
  "time_out"}``; one reply per symbol of a subscribe request;
* channel messages: ``{"channel": ..., "type": "snapshot"|"update", "data": ...}``
  for ``book``, ``trade``, ``instrument`` and ``status``; ``{"channel":
  "heartbeat"}`` about once a second when nothing else is sent.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final, Literal

from cryptorun_daemon.ingest.kraken.book import Precision
from cryptorun_daemon.ingest.kraken.checksum import Level
from cryptorun_daemon.timefmt import format_rfc3339, utc_from_ns

MessageType = Literal["snapshot", "update"]
Side = Literal["buy", "sell"]

BOOK_DEPTHS: Final = (10, 25, 100, 500, 1000)
"""Depths Kraken accepts for a ``book`` subscription."""

ErrorKind = Literal["non_json", "malformed"]


class FrameError(ValueError):
    """A frame that is not JSON or does not have the shape its channel requires."""

    def __init__(self, kind: ErrorKind, detail: str) -> None:
        self.kind: ErrorKind = kind
        super().__init__(detail)


# --- decoded messages -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MethodReply:
    """Reply to a request we sent (subscribe / unsubscribe ack, pong, error)."""

    method: str
    success: bool
    channel: str | None
    symbol: str | None
    error: str | None
    req_id: int | None


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Kraken's keep-alive, sent when a connection has had no other traffic for ~1 s."""


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    """Trading engine status (``online``, ``maintenance``, ``cancel_only``, ``post_only``)."""

    system: str
    connection_id: int | None


@dataclass(frozen=True, slots=True)
class InstrumentUpdate:
    """Precisions of the pairs listed in an ``instrument`` snapshot or update."""

    type: MessageType
    precisions: Mapping[str, Precision]
    statuses: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class BookMessage:
    """One ``book`` snapshot or update for one symbol."""

    type: MessageType
    symbol: str
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]
    checksum: int
    timestamp: str | None


@dataclass(frozen=True, slots=True)
class Trade:
    """One public trade."""

    symbol: str
    side: Side
    price: Decimal
    qty: Decimal
    trade_id: int
    timestamp: str
    ord_type: str | None = None


@dataclass(frozen=True, slots=True)
class TradeMessage:
    """A ``trade`` snapshot (the last 50 trades) or update (one or more trades)."""

    type: MessageType
    trades: tuple[Trade, ...] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class OtherMessage:
    """A well-formed frame for a channel or method this connector does not use."""

    name: str


Message = (
    MethodReply
    | Heartbeat
    | StatusUpdate
    | InstrumentUpdate
    | BookMessage
    | TradeMessage
    | OtherMessage
)


# --- decoding --------------------------------------------------------------------


def decode_frame(frame: str | bytes) -> Message:
    """Decode one WebSocket frame.

    Error handling: raises :class:`FrameError` (``kind="non_json"`` for text that
    is not a JSON object, ``kind="malformed"`` for JSON missing required fields
    or carrying wrong types). Never raises anything else for any input.
    """
    try:
        doc = json.loads(frame, parse_float=Decimal)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FrameError("non_json", f"not JSON: {str(exc)[:120]}") from None
    if not isinstance(doc, dict):
        raise FrameError("non_json", f"JSON {type(doc).__name__}, not an object")
    try:
        return _decode_object(doc)
    except FrameError:
        raise
    except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
        raise FrameError("malformed", f"{type(exc).__name__}: {str(exc)[:200]}") from None


def _decode_object(doc: dict[str, Any]) -> Message:
    if "method" in doc:
        return _method_reply(doc)
    channel = doc.get("channel")
    if not isinstance(channel, str):
        raise FrameError("malformed", "frame has neither 'method' nor 'channel'")
    if channel == "heartbeat":
        return Heartbeat()
    if channel == "status":
        status = _first(doc["data"])
        connection_id = status.get("connection_id")
        return StatusUpdate(
            system=_str(status["system"]),
            connection_id=connection_id if isinstance(connection_id, int) else None,
        )
    if channel == "instrument":
        return _instrument(doc)
    if channel == "book":
        return _book(doc)
    if channel == "trade":
        return _trades(doc)
    return OtherMessage(name=channel)


def _method_reply(doc: dict[str, Any]) -> MethodReply:
    result = doc.get("result")
    result = result if isinstance(result, dict) else {}
    # Error replies carry no ``result``; Kraken puts the failing symbol at top level.
    symbol = result.get("symbol", doc.get("symbol"))
    channel = result.get("channel", doc.get("channel"))
    error = doc.get("error")
    req_id = doc.get("req_id")
    return MethodReply(
        method=_str(doc["method"]),
        # A pong carries no ``success``; only an explicit false is a failure.
        success=doc.get("success", True) is not False,
        channel=channel if isinstance(channel, str) else None,
        symbol=symbol if isinstance(symbol, str) else None,
        error=str(error) if error is not None else None,
        req_id=req_id if isinstance(req_id, int) else None,
    )


def _instrument(doc: dict[str, Any]) -> InstrumentUpdate:
    data = doc["data"]
    if not isinstance(data, dict):
        raise FrameError("malformed", "instrument data must be an object")
    precisions: dict[str, Precision] = {}
    statuses: dict[str, str] = {}
    for pair in data.get("pairs", ()):
        symbol = _str(pair["symbol"])
        precisions[symbol] = Precision(
            price=_precision(pair["price_precision"]), qty=_precision(pair["qty_precision"])
        )
        statuses[symbol] = str(pair.get("status", ""))
    return InstrumentUpdate(type=_type(doc), precisions=precisions, statuses=statuses)


def _book(doc: dict[str, Any]) -> BookMessage:
    book = _first(doc["data"])
    timestamp = book.get("timestamp")
    return BookMessage(
        type=_type(doc),
        symbol=_str(book["symbol"]),
        bids=tuple(_level(level) for level in book.get("bids", ())),
        asks=tuple(_level(level) for level in book.get("asks", ())),
        checksum=_checksum(book["checksum"]),
        timestamp=timestamp if isinstance(timestamp, str) else None,
    )


def _trades(doc: dict[str, Any]) -> TradeMessage:
    data = doc["data"]
    if not isinstance(data, list):
        raise FrameError("malformed", "trade data must be a list")
    trades = []
    for item in data:
        side = item["side"]
        if side not in ("buy", "sell"):
            raise FrameError("malformed", f"trade side {side!r}")
        trade_id = item["trade_id"]
        if not isinstance(trade_id, int) or isinstance(trade_id, bool):
            raise FrameError("malformed", f"trade_id {trade_id!r} is not an integer")
        ord_type = item.get("ord_type")
        trades.append(
            Trade(
                symbol=_str(item["symbol"]),
                side=side,
                price=_decimal(item["price"]),
                qty=_decimal(item["qty"]),
                trade_id=trade_id,
                timestamp=_str(item["timestamp"]),
                ord_type=ord_type if isinstance(ord_type, str) else None,
            )
        )
    return TradeMessage(type=_type(doc), trades=tuple(trades))


def _first(data: Any) -> dict[str, Any]:
    if not isinstance(data, list) or not data or not isinstance(data[0], dict):
        raise FrameError("malformed", "data must be a non-empty list of objects")
    return data[0]


def _type(doc: dict[str, Any]) -> MessageType:
    kind = doc.get("type")
    if kind not in ("snapshot", "update"):
        raise FrameError("malformed", f"message type {kind!r}")
    return kind  # type: ignore[no-any-return]  # narrowed by the membership test above


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise FrameError("malformed", f"expected a string, got {type(value).__name__}")
    return value


def _decimal(value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | Decimal | str):
        raise FrameError("malformed", f"expected a number, got {type(value).__name__}")
    number = Decimal(value)
    if not number.is_finite() or number < 0:
        raise FrameError("malformed", f"number {value!r} is not finite and non-negative")
    return number


def _level(level: Any) -> Level:
    return (_decimal(level["price"]), _decimal(level["qty"]))


def _checksum(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFFFFFFFF:
        raise FrameError("malformed", f"checksum {value!r} is not an unsigned 32-bit integer")
    return value


def _precision(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 18:
        raise FrameError("malformed", f"precision {value!r} is not an integer in 0..18")
    return value


# --- timestamps ------------------------------------------------------------------


def ns_to_rfc3339(ns: int) -> str:
    """``ns`` since the epoch as Kraken writes it (always six fraction digits, ``Z``)."""
    return format_rfc3339(utc_from_ns(ns), precision="microseconds")


# --- requests --------------------------------------------------------------------


def subscribe_request(
    channel: str,
    req_id: int,
    symbols: Sequence[str] = (),
    *,
    depth: int | None = None,
    snapshot: bool | None = None,
) -> str:
    """A ``subscribe`` request (``symbols`` is omitted for ``instrument``)."""
    return _request("subscribe", channel, req_id, symbols, depth=depth, snapshot=snapshot)


def unsubscribe_request(
    channel: str, req_id: int, symbols: Sequence[str], *, depth: int | None = None
) -> str:
    """An ``unsubscribe`` request; ``depth`` must match the subscription's for ``book``."""
    return _request("unsubscribe", channel, req_id, symbols, depth=depth, snapshot=None)


def ping_request(req_id: int) -> str:
    """Kraken's application-level ping (answered with ``{"method": "pong"}``)."""
    return json.dumps({"method": "ping", "req_id": req_id})


def _request(
    method: str,
    channel: str,
    req_id: int,
    symbols: Sequence[str],
    *,
    depth: int | None,
    snapshot: bool | None,
) -> str:
    params: dict[str, Any] = {"channel": channel}
    if symbols:
        params["symbol"] = list(symbols)
    if depth is not None:
        params["depth"] = depth
    if snapshot is not None:
        params["snapshot"] = snapshot
    return json.dumps({"method": method, "params": params, "req_id": req_id})
