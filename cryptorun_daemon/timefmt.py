"""Timestamps on the wire and on disk: the one RFC 3339 formatter and the one parser.

Every timestamp the daemon writes (``/v1/status``, manifests, the fence, the
state stores, Kraken test frames) is UTC with a ``Z``::

    2025-09-01T00:00:00Z            whole seconds (the common case)
    2025-09-01T00:00:00.123456Z     sub-second instants keep their microseconds

``precision`` picks the fraction: ``"auto"`` (the default) prints one only when
the instant has one, so a value survives a JSON round trip unchanged;
``"microseconds"`` always prints six digits (Kraken's own form);
``"seconds"`` drops the fraction (window bounds, sealer status).

:func:`format_compact` is the same instant in the ISO 8601 *basic* form
(``20250901T000000Z``), for file and directory names, where colons are a
nuisance. Integer nanoseconds (the hot tier's ``ts``) convert with
:func:`utc_from_ns` and :func:`parse_rfc3339_ns`.

The parser accepts RFC 3339 (``T``, ``t`` or a space between date and time; any
number of fraction digits, kept to nanoseconds; ``Z``, ``z`` or ``±hh:mm``) and
refuses anything without a zone: guessing a zone is exactly the bug
UTC-everywhere prevents.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Final, Literal

Precision = Literal["auto", "seconds", "microseconds"]

_RFC3339: Final = re.compile(
    r"(\d{4}-\d\d-\d\d)[Tt ](\d\d:\d\d:\d\d)(?:\.(\d+))?([Zz]|[+-]\d\d:\d\d)"
)
_NS_PER_SECOND: Final = 1_000_000_000


def format_rfc3339(moment: datetime, *, precision: Precision = "auto") -> str:
    """``moment`` in UTC as RFC 3339 with a ``Z`` suffix (see the module docstring).

    Error handling: raises :class:`ValueError` for a naive datetime.
    """
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("naive datetime: timestamps must be timezone-aware UTC")
    moment = moment.astimezone(UTC)
    if precision == "auto":
        precision = "seconds" if moment.microsecond == 0 else "microseconds"
    return moment.isoformat(timespec=precision).replace("+00:00", "Z")


def format_compact(moment: datetime, *, precision: Precision = "seconds") -> str:
    """``moment`` in UTC in the basic form for names: ``20250901T000000Z``.

    ``"microseconds"`` appends six digits without a dot (``20250901T000000123456Z``)
    so names made in one second still sort and differ; ``"auto"`` does so only
    when the instant has a fraction.

    Error handling: raises :class:`ValueError` for a naive datetime.
    """
    text = format_rfc3339(moment, precision=precision)
    return text.replace("-", "").replace(":", "").replace(".", "")


def utc_from_ns(ns: int) -> datetime:
    """Integer nanoseconds since the epoch as a UTC datetime (truncated to microseconds)."""
    seconds, rest = divmod(ns, _NS_PER_SECOND)
    return datetime.fromtimestamp(seconds, UTC).replace(microsecond=rest // 1000)


def parse_rfc3339(text: str) -> datetime:
    """Parse an RFC 3339 timestamp into an aware UTC datetime (sub-µs digits dropped).

    Error handling: raises :class:`ValueError` naming the text for anything
    that is not RFC 3339 with a zone.
    """
    whole, nanos = _parse(text)
    return whole.replace(microsecond=nanos // 1000)


def parse_rfc3339_ns(text: str) -> int:
    """Parse an RFC 3339 timestamp into integer nanoseconds since the epoch.

    ``datetime`` keeps only microseconds, so the fraction is read separately
    and kept to nanoseconds (Kraken sends ``...36.925533Z``; others send nine
    digits). Error handling: as :func:`parse_rfc3339`.
    """
    whole, nanos = _parse(text)
    return int(whole.timestamp()) * _NS_PER_SECOND + nanos


def _parse(text: object) -> tuple[datetime, int]:
    """``text`` as (the whole second in UTC, nanoseconds past it)."""
    match = _RFC3339.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"not an RFC 3339 timestamp with a zone: {text!r}")
    day, clock, fraction, offset = match.groups()
    zone = "+00:00" if offset in ("Z", "z") else offset
    try:
        whole = datetime.fromisoformat(f"{day}T{clock}{zone}")
    except ValueError:  # well-formed but impossible, e.g. month 13
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}") from None
    nanos = int((fraction or "").ljust(9, "0")[:9])
    return whole.astimezone(UTC), nanos
