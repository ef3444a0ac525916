"""Checks each mirrored record line before a subscriber journals any of them.

The subscriber appends a peer's lines to its own journal byte for byte, and
everything downstream trusts that journal: recovery rebuilds positions from
it, the mirror server serves the lines that start with the local origin's
prefix, and the sealer turns ``dataset``/``venue``/``symbol`` into partition
directories. So every line of a records frame must be a record the followed
origin itself could have stamped, or none of the frame is applied:

* strict JSON object (no ``NaN``/``Infinity``, no empty line), not a control
  line (``{"ctl": …}`` lines are this region's own bookkeeping);
* starts with the followed origin's canonical prefix ``{"o":<origin>,"s":<seq>,``
  and decodes to the same origin and seq, seq contiguous with the frame header
  (so no duplicate key can make the journal reader and the JSON decoder
  disagree about whose record it is);
* a known dataset, typed fields that the dataset's Arrow schema accepts, and
  ``dataset``/``venue``/``symbol`` valid path segments by the layout's
  :func:`~cryptorun_daemon.storage.layout.check_segment`.

Each failure names a bounded reason, the ``reason`` label of
``cryptorun_hot_protocol_errors_total``: see :data:`LINE_REASONS`.

Two paths, one verdict. The *fast path* decodes a line with msgspec into typed
structs built from the same schemas (int64 bounds as constraints, floats that
msgspec can only produce finite) and accepts it when every check holds. Any
line it does not accept goes through the *reference path* — the dict-based
checks below, in their fixed order — which alone refuses, so the reason a peer
sees never depends on which decoder looked first. The fast path accepts only
what the reference path accepts (tests/unit/test_hot_line_check.py proves it
over generated lines).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Final, TypeGuard

import msgspec

from cryptorun_daemon.data.validate.schema import INT64_MAX, INT64_MIN, LATEST, FieldKind
from cryptorun_daemon.errors import PathRejectedError, ProtocolError
from cryptorun_daemon.hot.codec import DECODE_ERRORS
from cryptorun_daemon.hot.record import origin_prefix
from cryptorun_daemon.storage.layout import check_segment, symbol_segment

LINE_REASONS: Final = (
    "line_not_json",  # empty, not JSON, NaN/Infinity, nested too deep, not an object
    "line_control",  # a {"ctl": ...} journal control line
    "line_malformed",  # not the origin's record shape: keys missing, mistyped, not canonical
    "line_origin",  # a record of another origin (a forged local record, a third region)
    "line_seq",  # seq not contiguous with the frame header
    "line_dataset",  # a dataset with no schema
    "line_field_type",  # a field value the dataset's Arrow schema cannot hold
    "line_path_segment",  # dataset, venue or symbol breaks the layout's segment rules
)
# Stamped by the hot log or the sealer, never part of a record's fields.
_STAMPED: Final = frozenset({"origin", "seq"})
# The sealer derives the partition directory from these: present, not null. (A
# missing ``ts`` falls back to the ingest time, as it does for local records.)
_REQUIRED: Final = ("venue", "symbol")


@dataclass(frozen=True, slots=True)
class CheckedLine:
    """A mirrored line that passed every check, with what the follower needs from it."""

    seq: int
    ingest_ns: int
    venue: str
    symbol: str
    line: bytes


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# One decoder for every line: json.loads(..., parse_constant=...) would build a new one per call.
_DECODER: Final = json.JSONDecoder(parse_constant=_refuse_constant)


def _decode(line: bytes) -> dict[str, Any]:
    try:
        value = _DECODER.decode(line.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ProtocolError(f"not a JSON line: {exc}", reason="line_not_json") from None
    if not isinstance(value, dict):
        raise ProtocolError("line is not a JSON object", reason="line_not_json")
    return value


def _is_int64(value: Any) -> TypeGuard[int]:
    # Decoded JSON holds exact builtin types, so ``type() is`` suffices (and excludes bool).
    return type(value) is int and INT64_MIN <= value <= INT64_MAX


def _is_number(value: Any) -> bool:
    if type(value) is float:
        return math.isfinite(value)  # json turns 1e400 into inf
    return _is_int64(value)


def _is_number_list(value: Any) -> bool:
    if type(value) is not list:
        return False
    # Book levels are hundreds of floats per record: check them with C-level maps.
    kinds = set(map(type, value))
    if kinds <= {float}:
        return all(map(math.isfinite, value))
    return kinds <= {float, int} and all(map(_is_number, value))


# Whether an Arrow column of each kind can hold a decoded JSON value. Only types,
# never value domains: a price of 0 is a data-quality finding for validation, not
# a reason to refuse a peer's stream.
_FITS: Final[dict[FieldKind, Callable[[Any], bool]]] = {
    "timestamp": _is_int64,
    "int": _is_int64,
    "float": _is_number,
    "bool": lambda value: type(value) is bool,
    "string": lambda value: type(value) is str,
    "float_list": _is_number_list,
}
# Per dataset: (field, kind, check) for every field a record carries (not the stamped ones).
_FIELD_CHECKS: Final = {
    dataset: [(f.name, f.kind, _FITS[f.kind]) for f in schema.fields if f.name not in _STAMPED]
    for dataset, schema in LATEST.items()
}


def _check_fields(dataset: str, fields: dict[str, Any]) -> tuple[str, str]:
    checks = _FIELD_CHECKS.get(dataset)
    if checks is None:
        raise ProtocolError(f"unknown dataset {dataset!r:.40}", reason="line_dataset")
    for name in _REQUIRED:
        if fields.get(name) is None:
            raise ProtocolError(f"{dataset} record lacks {name!r}", reason="line_field_type")
    for name, kind, fits in checks:
        value = fields.get(name)
        if value is not None and not fits(value):  # null fits every column
            raise ProtocolError(
                f"{dataset}.{name} = {value!r:.60} is not {kind}", reason="line_field_type"
            )
    venue, symbol = fields["venue"], fields["symbol"]
    try:
        check_segment("dataset", dataset)
        check_segment("venue", venue)
        symbol_segment(symbol)
    except PathRejectedError as exc:
        raise ProtocolError(str(exc), reason="line_path_segment") from None
    return venue, symbol


@functools.lru_cache(maxsize=64)
def _prefix(origin: str) -> bytes:
    return origin_prefix(origin)


# ------------------------------------------------------------------ fast path
_Int64 = Annotated[int, msgspec.Meta(ge=INT64_MIN, le=INT64_MAX)]
# msgspec refuses NaN/Infinity literals and numbers out of float range, so every
# float it decodes is finite; ints are bounded to int64 like _is_int64.
_FAST_TYPES: Final[dict[FieldKind, Any]] = {
    "timestamp": _Int64 | None,
    "int": _Int64 | None,
    "float": _Int64 | float | None,
    "bool": bool | None,
    "string": str | None,
    "float_list": list[_Int64 | float] | None,
}


class _FastLine(msgspec.Struct, forbid_unknown_fields=True):
    """A record line exactly as the origin encoder writes it (a ``ctl`` key fails here)."""

    o: str
    s: _Int64
    i: _Int64
    d: str
    f: msgspec.Raw


_FAST_LINE: Final = msgspec.json.Decoder(_FastLine)
# (dataset, venue, symbol) triples that passed the path-segment checks: those checks are a
# pure function of the strings and were a fifth of a subscriber's CPU when run per line.
# Bounded like the authority's market table; cleared (not evicted) when full.
_SAFE_MARKETS: Final[set[tuple[str, str, str]]] = set()
_SAFE_MARKETS_MAX: Final = 4096
# Per dataset: a decoder of the fields struct. Unknown fields are refused here (the
# reference path then decides): msgspec skips an unknown field's value without checking
# all of it (invalid UTF-8 in its key passes), where the reference decodes every byte.
_FAST_FIELDS: Final[dict[str, msgspec.json.Decoder[Any]]] = {
    dataset: msgspec.json.Decoder(
        msgspec.defstruct(
            f"_{dataset.title()}Fields",
            [(f.name, _FAST_TYPES[f.kind], None) for f in schema.fields if f.name not in _STAMPED],
            forbid_unknown_fields=True,
        )
    )
    for dataset, schema in LATEST.items()
}


def _check_line_fast(line: bytes, origin: str, seq: int) -> CheckedLine | None:
    """The checked line, or ``None`` when the reference path must decide."""
    if not line.isascii():
        try:
            line.decode("utf-8")  # the reference refuses any line that is not UTF-8
        except UnicodeDecodeError:
            return None
    try:
        body = _FAST_LINE.decode(line)
    except DECODE_ERRORS:
        return None
    if body.o != origin or body.s != seq:
        return None
    decoder = _FAST_FIELDS.get(body.d)
    if decoder is None or not line.startswith(b'%s%d,"i":' % (_prefix(origin), seq)):
        return None
    try:
        fields = decoder.decode(body.f)
    except DECODE_ERRORS:
        return None
    venue, symbol = fields.venue, fields.symbol
    if venue is None or symbol is None:
        return None
    market = (body.d, venue, symbol)
    if market not in _SAFE_MARKETS and not _remember_safe(market):
        return None
    return CheckedLine(seq=seq, ingest_ns=body.i, venue=venue, symbol=symbol, line=line)


def check_line(line: bytes, *, origin: str, seq: int) -> CheckedLine:
    """Check one line that must be ``origin``'s record number ``seq``.

    Error handling: :class:`ProtocolError` whose ``reason`` is one of
    :data:`LINE_REASONS`.
    """
    checked = _check_line_fast(line, origin, seq)
    return checked if checked is not None else _check_line_reference(line, origin, seq)


def _check_line_reference(line: bytes, origin: str, seq: int) -> CheckedLine:
    """The dict-based checks in their fixed order: the only path that refuses."""
    body = _decode(line)
    if "ctl" in body:
        raise ProtocolError("a peer sent a journal control line", reason="line_control")
    claimed = body.get("o")
    if not isinstance(claimed, str):
        raise ProtocolError("record line has no origin", reason="line_malformed")
    if claimed != origin:
        raise ProtocolError(
            f"record of origin {claimed!r:.40} on the stream of {origin!r}", reason="line_origin"
        )
    stamped = body.get("s")
    if not _is_int64(stamped) or stamped != seq:
        raise ProtocolError(f"record seq {stamped!r:.30} where {seq} was due", reason="line_seq")
    # The journal reader recognises an origin's records by this prefix without decoding;
    # it must agree with the decoded origin and seq (a duplicate "o" key could split them).
    if not line.startswith(b'%s%d,"i":' % (_prefix(origin), seq)):
        raise ProtocolError("record line is not in canonical form", reason="line_malformed")
    ingest_ns, dataset, fields = body.get("i"), body.get("d"), body.get("f")
    if not _is_int64(ingest_ns) or not isinstance(dataset, str) or not isinstance(fields, dict):
        raise ProtocolError("record line has missing or mistyped i/d/f", reason="line_malformed")
    venue, symbol = _check_fields(dataset, fields)
    return CheckedLine(seq=seq, ingest_ns=ingest_ns, venue=venue, symbol=symbol, line=line)


# ----------------------------------------------------------- whole frames
def _merged_field_types() -> list[tuple[str, Any, None]]:
    """One typed field per name over every dataset (a name's kind must agree across them)."""
    kinds: dict[str, FieldKind] = {}
    for schema in LATEST.values():
        for f in schema.fields:
            if f.name in _STAMPED:
                continue
            if kinds.setdefault(f.name, f.kind) != f.kind:
                raise TypeError(f"field {f.name!r} has two kinds; merge per dataset instead")
    return [(name, _FAST_TYPES[kind], None) for name, kind in kinds.items()]


# Every dataset's fields in one struct, so a whole frame decodes in one call without
# knowing each line's dataset first. It accepts a line carrying another dataset's
# (correctly typed) field, which the reference path also accepts: it checks only the
# fields of the line's own dataset. Unknown names are refused, as on the fast path.
_AnyFields = msgspec.defstruct("_AnyFields", _merged_field_types(), forbid_unknown_fields=True)


class _FrameLine(msgspec.Struct, forbid_unknown_fields=True):
    """A record line decoded as an element of a whole frame (fields typed)."""

    o: str
    s: _Int64
    i: _Int64
    d: str
    f: _AnyFields  # type: ignore[valid-type]  # built by defstruct from the schemas


_FRAME_DECODER: Final = msgspec.json.Decoder(list[_FrameLine])
# Joins a frame's lines into one JSON array. The newline makes it impossible for one
# element to span two lines: a string holding a raw newline is not JSON, every list
# field holds numbers only, and every line must start with the canonical ``{"o":``
# prefix (checked per element below), which cannot continue an object's key list.
# So with one line per element (counts equal, each line opens at least one),
# element k is exactly line k.
_FRAME_JOIN: Final = b",\n"


@dataclass(frozen=True, slots=True)
class CheckedFrame:
    """The lines of a records frame that passed every check, and what a follower needs.

    ``latest`` maps each (venue, symbol) to ``(index, ingest_ns)`` of its last line.
    """

    first_seq: int
    lines: list[bytes]
    ingest_ns: list[int]
    latest: dict[tuple[str, str], tuple[int, int]]


def _check_frame_fast(lines: Sequence[bytes], origin: str, first_seq: int) -> CheckedFrame | None:
    """All lines decoded in one call; ``None`` when any line needs the per-line checks."""
    body = b"[" + _FRAME_JOIN.join(lines) + b"]"
    if not body.isascii():
        return None  # the per-line path decides what non-ASCII bytes mean
    try:
        items = _FRAME_DECODER.decode(body)
    except DECODE_ERRORS:
        return None
    if len(items) != len(lines):
        return None
    prefix = _prefix(origin)
    ingest: list[int] = []
    latest: dict[tuple[str, str], tuple[int, int]] = {}
    for index, (item, line) in enumerate(zip(items, lines, strict=True)):
        seq = first_seq + index
        if item.o != origin or item.s != seq or item.d not in _FAST_FIELDS:
            return None
        if not line.startswith(b'%s%d,"i":' % (prefix, seq)):
            return None
        fields: Any = item.f  # a defstruct type: mypy cannot see its attributes
        venue, symbol = fields.venue, fields.symbol
        if venue is None or symbol is None:
            return None
        market = (item.d, venue, symbol)
        if market not in _SAFE_MARKETS and not _remember_safe(market):
            return None
        ingest.append(item.i)
        latest[(venue, symbol)] = (index, item.i)
    return CheckedFrame(first_seq, list(lines), ingest, latest)


def _remember_safe(market: tuple[str, str, str]) -> bool:
    """Check a market's path segments once; remember it when they pass."""
    try:
        check_segment("dataset", market[0])
        check_segment("venue", market[1])
        symbol_segment(market[2])
    except PathRejectedError:
        return False
    if len(_SAFE_MARKETS) >= _SAFE_MARKETS_MAX:
        _SAFE_MARKETS.clear()
    _SAFE_MARKETS.add(market)
    return True


def check_frame(lines: Sequence[bytes], *, origin: str, first_seq: int) -> CheckedFrame:
    """Check every line of a records frame, all or nothing, decoding the frame in one call.

    Accepts exactly what :func:`check_batch` accepts: a frame the one-call
    decode cannot vouch for line by line goes through :func:`check_batch`,
    which alone refuses.

    Error handling: as :func:`check_batch`.
    """
    if not lines:
        return CheckedFrame(first_seq, [], [], {})
    checked = _check_frame_fast(lines, origin, first_seq)
    if checked is not None:
        return checked
    slow = check_batch(lines, origin=origin, first_seq=first_seq)
    latest: dict[tuple[str, str], tuple[int, int]] = {}
    for index, one in enumerate(slow):
        latest[(one.venue, one.symbol)] = (index, one.ingest_ns)
    return CheckedFrame(
        first_seq, [one.line for one in slow], [one.ingest_ns for one in slow], latest
    )


def check_batch(lines: Sequence[bytes], *, origin: str, first_seq: int) -> list[CheckedLine]:
    """Check every line of a records frame (seqs ``first_seq`` onward), all or nothing.

    Error handling: the first bad line raises :class:`ProtocolError` (reason
    in :data:`LINE_REASONS`, message naming its seq); nothing is returned for
    the lines before it, so the caller writes none of the frame.
    """
    checked = []
    for offset, line in enumerate(lines):
        seq = first_seq + offset
        try:
            checked.append(check_line(line, origin=origin, seq=seq))
        except ProtocolError as exc:
            raise ProtocolError(f"line for seq {seq}: {exc}", reason=exc.reason) from None
    return checked
