"""A hot-log record and its one-line encoding, shared by the journal and the wire.

A record is encoded exactly once, when the origin stamps it: the same bytes go
to the origin's journal, its replay buffer, every mirror frame and every
subscriber's journal. Mirror clients therefore never re-encode a record; they
decode each one only to check it (``line_check``) before journaling its bytes.

Line format (one JSON object, no newline inside)::

    {"o": origin, "s": seq, "i": ingest_ns, "d": dataset, "f": {...fields}}

Control lines in the journal carry ``"ctl"`` instead of ``"s"``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from cryptorun_daemon.errors import ProtocolError

_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, allow_nan=False)


@dataclass(frozen=True, slots=True)
class HotRecord:
    """A stamped record: ``seq`` is contiguous from 1 under the origin's replid.

    ``line`` is the canonical encoding; ``venue``/``symbol`` are kept unpacked
    because the mirror server summarises freshness per (venue, symbol).
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
    body = {"o": origin, "s": seq, "i": ingest_ns, "d": dataset, "f": fields}
    line = _ENCODER.encode(body).encode("ascii")
    return _record(origin, seq, ingest_ns, dataset, fields, line=line)


def origin_prefix(origin: str) -> bytes:
    """The bytes every record line of ``origin`` starts with (``{"o":<origin>,"s":``).

    :func:`encode_record` writes keys in a fixed order, so a journal reader can
    pick one origin's records out of a mixed segment without decoding the others.
    """
    return b'{"o":' + _ENCODER.encode(origin).encode("ascii") + b',"s":'


def encode_control(body: dict[str, Any]) -> bytes:
    """A journal control line (replid change, recorded gap, clean close)."""
    return _ENCODER.encode(body).encode("ascii")


def decode_line(line: bytes) -> dict[str, Any]:
    """Parse one line into its JSON object.

    Error handling: raises :class:`ProtocolError` when the line is not a JSON
    object (a torn journal tail or a corrupt frame).
    """
    try:
        value = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"not a JSON line: {exc}") from None
    if not isinstance(value, dict):
        raise ProtocolError("line is not a JSON object")
    return value


def record_from_line(line: bytes) -> HotRecord:
    """Rebuild a :class:`HotRecord` from its line (journal recovery).

    Error handling: raises :class:`ProtocolError` when a field is missing or mistyped.
    """
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
