"""The hot mirror wire format (``GET /v1/hot/stream``), encoding and validation only.

Control messages are WebSocket *text* frames holding one JSON object with a
``type``; records travel in *binary* frames so that neither side has to
re-encode them:

    b"R" + header JSON + b"\\n" + line_1 + b"\\n" + ... + line_n

The header is ``{"replid", "first_seq", "count", "first_ingest_ns",
"last_ingest_ns", "head_seq", "latest"}``; the lines are the origin's journal
lines (``cryptorun_daemon.hot.record``) for seqs ``first_seq .. first_seq +
count - 1``, contiguous. ``latest`` lists ``[venue, symbol, ingest_ns]`` of the
newest record per pair in the batch (informational: a subscriber checks every
line with ``line_check`` and takes freshness from the checked lines).

Client → server: ``{"type": "subscribe", "origin", "replid", "from_seq"}``
(``type`` may be omitted on the first message) and ``{"type": "ping", "t"}``.
Server → client: ``hello``, ``gap`` (``from_seq``, ``available_from``,
``replid``), ``heartbeat`` (``origin_ns``, ``head_seq``, ``echo``) and records.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import msgspec

from cryptorun_daemon.errors import ProtocolError
from cryptorun_daemon.hot import codec
from cryptorun_daemon.hot.record import HotRecord

RECORDS_TAG = b"R"

# WebSocket close codes the mirror uses; 4000-4999 are application-defined.
CLOSE_GOING_AWAY = 1001
CLOSE_MALFORMED = 1007
CLOSE_TOO_BIG = 1009
CLOSE_BAD_SUBSCRIBE = 4400
CLOSE_WRONG_ORIGIN = 4404
CLOSE_TOO_MANY_SUBSCRIBERS = 4429  # the origin's hot.max_subscribers streams are open


class _Header(msgspec.Struct):
    """A records frame's header as it travels (typed: msgspec validates every field)."""

    replid: str
    first_seq: int
    count: int
    first_ingest_ns: int
    last_ingest_ns: int
    head_seq: int
    latest: list[tuple[str, str, int]]


_HEADER_DECODER: Final = msgspec.json.Decoder(_Header)


@dataclass(frozen=True, slots=True)
class Subscribe:
    origin: str
    replid: str | None
    from_seq: int


@dataclass(frozen=True, slots=True)
class RecordsHeader:
    replid: str
    first_seq: int
    count: int
    first_ingest_ns: int
    last_ingest_ns: int
    head_seq: int
    latest: list[tuple[str, str, int]]


def text(message: dict[str, Any]) -> str:
    """Encode one control message."""
    return codec.encode(message).decode("utf-8")


def subscribe(origin: str, replid: str | None, from_seq: int) -> str:
    return text({"type": "subscribe", "origin": origin, "replid": replid, "from_seq": from_seq})


def hello(origin: str, replid: str, head_seq: int, available_from: int) -> str:
    return text(
        {
            "type": "hello",
            "origin": origin,
            "replid": replid,
            "head_seq": head_seq,
            "available_from": available_from,
        }
    )


def gap(from_seq: int, available_from: int, replid: str, reason: str) -> str:
    return text(
        {
            "type": "gap",
            "from_seq": from_seq,
            "available_from": available_from,
            "replid": replid,
            "reason": reason,
        }
    )


def heartbeat(origin_ns: int, head_seq: int, echo: int | None) -> str:
    return text({"type": "heartbeat", "origin_ns": origin_ns, "head_seq": head_seq, "echo": echo})


def ping(local_ns: int) -> str:
    return text({"type": "ping", "t": local_ns})


def parse_text(data: str) -> dict[str, Any]:
    """Parse a control message.

    Error handling: :class:`ProtocolError` when it is not a JSON object.
    """
    try:
        value = codec.decode(data)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"control frame is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ProtocolError("control frame is not a JSON object")
    return value


def parse_subscribe(message: dict[str, Any]) -> Subscribe:
    """Validate a subscribe request.

    Error handling: :class:`ProtocolError` naming the first bad field.
    """
    if message.get("type", "subscribe") != "subscribe":
        raise ProtocolError(f"expected a subscribe message, got type {message.get('type')!r}")
    origin, replid, from_seq = message.get("origin"), message.get("replid"), message.get("from_seq")
    if not isinstance(origin, str) or not origin:
        raise ProtocolError("subscribe.origin must be a region name")
    if replid is not None and not isinstance(replid, str):
        raise ProtocolError("subscribe.replid must be a string or null")
    if isinstance(from_seq, bool) or not isinstance(from_seq, int) or from_seq < 1:
        raise ProtocolError("subscribe.from_seq must be an integer >= 1")
    return Subscribe(origin, replid, from_seq)


def encode_records(replid: str, records: list[HotRecord], head_seq: int) -> bytes:
    """One records frame for a contiguous run of records (at least one)."""
    return encode_run(
        replid,
        records[0].seq,
        len(records),
        b"\n".join(r.line for r in records),
        first_ingest_ns=records[0].ingest_ns,
        last_ingest_ns=records[-1].ingest_ns,
        head_seq=head_seq,
        latest=_latest(records),
    )


def _latest(records: list[HotRecord]) -> list[tuple[str, str, int]]:
    latest = {(record.venue, record.symbol): record.ingest_ns for record in records}  # last wins
    return [(venue, symbol, ns) for (venue, symbol), ns in latest.items()]


def encode_run(
    replid: str,
    first_seq: int,
    count: int,
    body: bytes,
    *,
    first_ingest_ns: int,
    last_ingest_ns: int,
    head_seq: int,
    latest: list[tuple[str, str, int]],
) -> bytes:
    """One records frame from ``count`` record lines already joined by newlines (``body``).

    The journal catch-up path sends runs of lines sliced from segments this
    way without decoding them, so its ``latest`` is empty (the field is
    informational: subscribers take freshness from the lines they check).
    """
    header = _Header(replid, first_seq, count, first_ingest_ns, last_ingest_ns, head_seq, latest)
    return b"".join((RECORDS_TAG, codec.encode(header), b"\n", body))


def decode_records(frame: bytes) -> tuple[RecordsHeader, list[bytes]]:
    """Split a records frame into its header and record lines.

    Error handling: :class:`ProtocolError` when the tag, header or line count
    is wrong, so a corrupt frame is never applied.
    """
    if not frame.startswith(RECORDS_TAG):
        raise ProtocolError("binary frame is not a records frame")
    cut = frame.find(b"\n")
    if cut < 0:
        raise ProtocolError("records frame has no header line")
    try:
        raw = _HEADER_DECODER.decode(frame[1:cut])
    except codec.DECODE_ERRORS as exc:
        raise ProtocolError(f"records header is malformed: {exc}") from None
    header = RecordsHeader(
        replid=raw.replid,
        first_seq=raw.first_seq,
        count=raw.count,
        first_ingest_ns=raw.first_ingest_ns,
        last_ingest_ns=raw.last_ingest_ns,
        head_seq=raw.head_seq,
        latest=raw.latest,
    )
    lines = frame[cut + 1 :].split(b"\n")
    if header.count < 1 or len(lines) != header.count or header.first_seq < 1:
        raise ProtocolError(f"records frame announces {header.count} records, carries {len(lines)}")
    return header, lines
