"""The one RFC 3339 formatter and parser: wire forms, round trips, refusals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from cryptorun_daemon.timefmt import (
    format_compact,
    format_rfc3339,
    parse_rfc3339,
    parse_rfc3339_ns,
    utc_from_ns,
)

T0 = datetime(2025, 9, 1, tzinfo=UTC)
T0_NS = 1_756_684_800_000_000_000


def test_wire_forms_are_unchanged() -> None:
    """Whole seconds print as ``...00Z``; a fraction keeps six digits; other zones become Z."""
    assert format_rfc3339(T0) == "2025-09-01T00:00:00Z"
    assert format_rfc3339(T0 + timedelta(microseconds=500_000)) == "2025-09-01T00:00:00.500000Z"
    plus2 = datetime(2025, 9, 1, 2, tzinfo=timezone(timedelta(hours=2)))
    assert format_rfc3339(plus2) == "2025-09-01T00:00:00Z"


def test_precision_choices() -> None:
    """``seconds`` drops a fraction, ``microseconds`` always prints one (Kraken's form)."""
    moment = T0 + timedelta(microseconds=123_456)
    assert format_rfc3339(moment, precision="seconds") == "2025-09-01T00:00:00Z"
    assert format_rfc3339(T0, precision="microseconds") == "2025-09-01T00:00:00.000000Z"
    assert format_rfc3339(moment, precision="microseconds") == "2025-09-01T00:00:00.123456Z"


def test_compact_form_for_names() -> None:
    """The basic form has no dashes, colons or dots (safe in file names) and sorts by time."""
    moment = T0 + timedelta(hours=13, minutes=5, seconds=7, microseconds=42)
    assert format_compact(moment) == "20250901T130507Z"
    assert format_compact(moment, precision="microseconds") == "20250901T130507000042Z"
    later = moment + timedelta(microseconds=1)
    assert format_compact(later, precision="microseconds") > format_compact(
        moment, precision="microseconds"
    )


@pytest.mark.parametrize(
    "moment",
    [
        T0,
        T0 + timedelta(microseconds=1),
        T0 + timedelta(days=400, seconds=3599, microseconds=999_999),
        datetime(1999, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=-5))),
    ],
)
def test_format_then_parse_round_trips(moment: datetime) -> None:
    """Every aware instant survives format → parse → format unchanged."""
    text = format_rfc3339(moment)
    assert parse_rfc3339(text) == moment
    assert format_rfc3339(parse_rfc3339(text)) == text
    assert parse_rfc3339(text).tzinfo == UTC


def test_parser_accepts_rfc3339_variants() -> None:
    """Lowercase ``t``/``z``, a space separator, offsets and long fractions are RFC 3339."""
    assert parse_rfc3339("2025-09-01t00:00:00z") == T0
    assert parse_rfc3339("2025-09-01 00:00:00Z") == T0
    assert parse_rfc3339("2025-09-01T02:00:00+02:00") == T0
    assert parse_rfc3339("2025-09-01T00:00:00.123456789Z") == T0 + timedelta(microseconds=123_456)


def test_nanoseconds_are_kept_by_the_ns_parser() -> None:
    """``parse_rfc3339_ns`` keeps digits below a microsecond; ``utc_from_ns`` inverts it to µs."""
    assert parse_rfc3339_ns("2025-09-01T00:00:00.123456789Z") == T0_NS + 123_456_789
    assert parse_rfc3339_ns("2025-09-01T02:00:00.5+02:00") == T0_NS + 500_000_000
    assert utc_from_ns(T0_NS + 123_456_789) == T0 + timedelta(microseconds=123_456)
    assert format_rfc3339(utc_from_ns(T0_NS)) == "2025-09-01T00:00:00Z"


@pytest.mark.parametrize(
    "text",
    [
        "2025-09-01T00:00:00",  # no zone
        "2025-09-01",  # no time
        "2025-09-01T00:00Z",  # no seconds
        "2025-09-01T00:00:00+0200",  # offset without a colon is ISO 8601, not RFC 3339
        "2025-13-01T00:00:00Z",  # impossible month
        "yesterday",
        " 2025-09-01T00:00:00Z",
    ],
)
def test_parser_refuses_what_is_not_rfc3339_with_a_zone(text: str) -> None:
    """Anything without a zone, or not RFC 3339 at all, is a ``ValueError`` naming the text."""
    with pytest.raises(ValueError, match="RFC 3339"):
        parse_rfc3339(text)
    with pytest.raises(ValueError, match="RFC 3339"):
        parse_rfc3339_ns(text)


def test_formatter_refuses_naive_datetimes() -> None:
    """A naive datetime is refused rather than guessed to be local time or UTC."""
    with pytest.raises(ValueError, match="naive"):
        format_rfc3339(datetime(2025, 9, 1))  # deliberately naive
    with pytest.raises(ValueError, match="naive"):
        format_compact(datetime(2025, 9, 1))  # deliberately naive
