"""A hot-log record and its one-line encoding, shared by the journal and the wire.

A record is encoded exactly once, when the origin stamps it: the same bytes go
to the origin's journal, its replay buffer, every mirror frame and every
subscriber's journal. Mirror clients therefore never re-encode a record; they
decode each one only to check it (``line_check``) before journaling its bytes.

Line format (one JSON object, no newline inside)::

    {"o": origin, "s": seq, "i": ingest_ns, "d": dataset, "f": {...fields}}

Control lines in the journal carry ``"ctl"`` instead of ``"s"``. The bytes
come from :mod:`~cryptorun_daemon.hot.codec` (msgspec); lines written by the
standard ``json`` module before it (ASCII escapes, ``1e-05`` floats) are the
same JSON values and read the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import msgspec

from cryptorun_daemon.errors import ProtocolError
from cryptorun_daemon.hot import codec


class RecordLine(msgspec.Struct):
    """A record line's JSON object; field order is the line's key order (see module doc)."""

    o: str
    s: int
    i: int
    d: str
    f: dict[str, Any]


_LINE_DECODER: Final = msgspec.json.Decoder(RecordLine)


class HotRecord(msgspec.Struct, frozen=True, gc=False):
    """A stamped record: ``seq`` is contiguous from 1 under the origin's replid.

    ``line`` is the canonical encoding; ``venue``/``symbol`` are kept unpacked
    because the mirror server summarises freshness per (venue, symbol).

    A msgspec struct rather than a frozen dataclass: the origin builds one per
    ingested record, and a frozen dataclass's ``__init__`` (one
    ``object.__setattr__`` per field) cost 1.4 µs of the ~7 µs an ingested
    record cost (bench/hot_floor.py). ``gc=False`` because it only holds
    strings, ints and bytes (no cycles possible), so the 200,000 records a
    replay buffer holds are never traversed by the cyclic collector.
    """

    origin: str
    seq: int
    ingest_ns: int
    dataset: str
    venue: str
    symbol: str
    line: bytes

    @property
    def size(self) -> int:
        return len(self.line) + 1  # + the newline that separates lines on disk and wire


def _record(
    origin: str, seq: int, ingest_ns: int, dataset: str, fields: dict[str, Any], *, line: bytes
) -> HotRecord:
    """The one place a :class:`HotRecord` is assembled from a record's parts."""
    return HotRecord(
        origin=origin,
        seq=seq,
        ingest_ns=ingest_ns,
        dataset=dataset,
        venue=str(fields.get("venue", "")),
        symbol=str(fields.get("symbol", "")),
        line=line,
    )


def encode_record(
    origin: str, seq: int, ingest_ns: int, dataset: str, fields: dict[str, Any]
) -> HotRecord:
    """Stamp and encode one record.

    Error handling: raises ``ValueError`` for fields JSON cannot carry (NaN,
    infinities, non-serialisable objects) so a bad feed value never reaches disk.
    """
    line = codec.encode(RecordLine(origin, seq, ingest_ns, dataset, fields))
    return _record(origin, seq, ingest_ns, dataset, fields, line=line)


def encode_records_batch(
    origin: str, first_seq: int, items: Sequence[tuple[int, str, dict[str, Any]]]
) -> tuple[list[HotRecord], list[int]]:
    """Stamp and encode ``(ingest_ns, dataset, fields)`` items with seqs from ``first_seq``.

    The same lines :func:`encode_record` gives, one per item, with consecutive
    seqs over the items it takes. Returns the records and the indexes of the
    items refused (fields JSON cannot carry; they take no seq).

    Why not :func:`encode_record` in a loop: the check for NaN and infinities
    (:func:`codec.encode` scans each line for ``null``) is done once over the
    whole batch; only a batch with a ``null`` somewhere is checked line by line.
    """
    encode = codec.ENCODER.encode
    lines: list[bytes] = []
    try:
        for offset, (ingest_ns, dataset, fields) in enumerate(items):
            lines.append(encode(RecordLine(origin, first_seq + offset, ingest_ns, dataset, fields)))
    except (TypeError, msgspec.EncodeError):
        lines = []  # some item is refused: the careful path below names it
    if len(lines) == len(items) and b"null" not in b"".join(lines):
        # HotRecord built inline (what _record does): a call per record is measurable here.
        return [
            HotRecord(
                origin,
                first_seq + offset,
                ingest_ns,
                dataset,
                str(fields.get("venue", "")),
                str(fields.get("symbol", "")),
                line,
            )
            for offset, ((ingest_ns, dataset, fields), line) in enumerate(
                zip(items, lines, strict=True)
            )
        ], []
    records: list[HotRecord] = []
    refused: list[int] = []
    seq = first_seq
    for index, (ingest_ns, dataset, fields) in enumerate(items):
        try:
            records.append(encode_record(origin, seq, ingest_ns, dataset, fields))
        except ValueError:
            refused.append(index)
            continue
        seq += 1
    return records, refused


def origin_prefix(origin: str) -> bytes:
    """The bytes every record line of ``origin`` starts with (``{"o":<origin>,"s":``).

    :func:`encode_record` writes keys in a fixed order, so a journal reader can
    pick one origin's records out of a mixed segment without decoding the others.
    """
    return b'{"o":' + codec.encode(origin) + b',"s":'


def encode_control(body: dict[str, Any]) -> bytes:
    """A journal control line (replid change, recorded gap, clean close)."""
    return codec.encode(body)


def decode_line(line: bytes) -> dict[str, Any]:
    """Parse one line into its JSON object.

    Error handling: raises :class:`ProtocolError` when the line is not a JSON
    object (a torn journal tail or a corrupt frame).
    """
    try:
        value = codec.decode(line)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ProtocolError(f"not a JSON line: {exc}") from None
    if not isinstance(value, dict):
        raise ProtocolError("line is not a JSON object")
    return value


def record_from_line(line: bytes) -> HotRecord:
    """Rebuild a :class:`HotRecord` from its line (journal recovery).

    Error handling: raises :class:`ProtocolError` when a field is missing or mistyped.
    """
    try:
        typed = _LINE_DECODER.decode(line)
    except codec.DECODE_ERRORS:
        return _record_from_body(line)  # the exact reason (or json's wider acceptance)
    return _record(typed.o, typed.s, typed.i, typed.d, typed.f, line=line)


def record_parts(line: bytes) -> tuple[Any, Any, Any, Any, Any]:
    """``(origin, seq, ingest_ns, dataset, fields)`` of a journal record line, fast.

    The same values ``decode_line(line)["o"]``, ``["s"]``, ``["i"]``, ``["d"]``
    and ``["f"]`` give: a typed decode first, and for a line it cannot take
    (mistyped values, the standard library's wider JSON) exactly that lookup.

    Error handling: as ``decode_line`` (:class:`ProtocolError`), and ``KeyError``
    for a JSON object that lacks one of the keys.
    """
    try:
        typed = _LINE_DECODER.decode(line)
    except codec.DECODE_ERRORS:
        body = decode_line(line)
        return body["o"], body["s"], body["i"], body["d"], body["f"]
    return typed.o, typed.s, typed.i, typed.d, typed.f


def _record_from_body(line: bytes) -> HotRecord:
    body = decode_line(line)
    try:
        fields = body["f"]
        origin, seq, ingest_ns, dataset = body["o"], body["s"], body["i"], body["d"]
    except KeyError as exc:
        raise ProtocolError(f"record line lacks {exc}") from None
    if not (
        isinstance(origin, str)
        and isinstance(seq, int)
        and isinstance(ingest_ns, int)
        and isinstance(dataset, str)
        and isinstance(fields, dict)
    ):
        raise ProtocolError("record line has mistyped fields")
    return _record(origin, seq, ingest_ns, dataset, fields, line=line)
