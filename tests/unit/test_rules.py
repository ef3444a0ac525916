"""TimeRange parsing and edges; Step/Plan JSON round trips."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from cryptorun_daemon.errors import UsageError
from cryptorun_daemon.replication.rules import (
    Plan,
    PlannedPartition,
    SkippedPartition,
    Step,
    TimeRange,
    parse_region,
    parse_tier,
)

T0 = datetime(2025, 9, 1, tzinfo=UTC)


def test_parse_start_end_in_utc() -> None:
    """START/END in RFC 3339 with Z parses to UTC-aware bounds."""
    window = TimeRange.parse("2025-09-01T00:00:00Z/2025-09-01T06:00:00Z")
    assert window.start == T0
    assert window.end == T0 + timedelta(hours=6)
    assert str(window) == "2025-09-01T00:00:00Z/2025-09-01T06:00:00Z"


def test_offsets_are_normalised_to_utc() -> None:
    """An explicit offset is accepted and converted to UTC."""
    window = TimeRange.parse("2025-09-01T02:00:00+02:00/2025-09-01T03:00:00Z")
    assert window.start == T0
    assert window.start.tzinfo == UTC


@pytest.mark.parametrize(
    "text",
    [
        "2025-09-01T00:00:00/2025-09-01T06:00:00Z",  # naive start
        "2025-09-01T00:00:00Z/2025-09-01T06:00:00",  # naive end
        "2025-09-01T06:00:00Z/2025-09-01T06:00:00Z",  # empty
        "2025-09-01T06:00:00Z/2025-09-01T00:00:00Z",  # reversed
        "2025-09-01T00:00:00Z",  # no end
        "yesterday/today",
        "2025-09-01T00:00:00Z/2025-09-01T01:00:00Z/2025-09-01T02:00:00Z",
        "",
    ],
)
def test_bad_windows_are_usage_errors(text: str) -> None:
    """Naive datetimes, end <= start and malformed text raise UsageError."""
    with pytest.raises(UsageError):
        TimeRange.parse(text)


def test_constructor_rejects_naive_datetimes() -> None:
    """Building a TimeRange directly from naive datetimes is refused too."""
    with pytest.raises(UsageError):
        TimeRange(datetime(2025, 9, 1), datetime(2025, 9, 2))


def test_half_open_containment() -> None:
    """A span ending exactly at end is inside; one crossing end or start is not."""
    window = TimeRange(T0, T0 + timedelta(hours=6))
    hour = timedelta(hours=1)
    assert window.contains_span(T0, T0 + hour)
    assert window.contains_span(T0 + 5 * hour, T0 + 6 * hour)
    assert not window.contains_span(T0 + 5 * hour, T0 + 7 * hour)
    assert not window.contains_span(T0 - hour, T0 + hour)
    assert not window.overlaps(T0 + 6 * hour, T0 + 7 * hour)


def test_time_range_equality_ignores_offset_spelling() -> None:
    """Two spellings of the same instants compare equal (they are normalised)."""
    tz = timezone(timedelta(hours=-5))
    a = TimeRange(T0, T0 + timedelta(hours=1))
    b = TimeRange(T0.astimezone(tz), (T0 + timedelta(hours=1)).astimezone(tz))
    assert a == b


def test_plan_round_trips_through_json() -> None:
    """A plan serialises to JSON and parses back equal."""
    step = Step(
        tier="warm",
        from_region="eu-central",
        to_region="us-east",
        window=TimeRange(T0, T0 + timedelta(hours=1)),
        validators=("schema",),
        partitions=(
            PlannedPartition(
                "trade/venue=kraken/symbol=BTC-USD/date=2025-09-01/hour=00",
                "xxh3_128:00",
                1,
                10,
                "2025-09-01T01:00:00Z",
                1,
            ),
        ),
    )
    plan = Plan(
        "warm",
        "eu-central",
        "us-east",
        TimeRange(T0, T0 + timedelta(days=1)),
        steps=(step,),
        in_sync=3,
        skipped=(SkippedPartition("x", "unsealed"),),
    )
    doc = plan.to_json()
    assert doc["summary"] == {
        "steps": 1,
        "partitions": 1,
        "files": 1,
        "bytes": 10,
        "in_sync": 3,
        "skipped": 1,
    }
    assert Plan.from_json(doc) == plan


def test_region_and_tier_names_are_checked() -> None:
    """Region names follow the contract; unknown tiers are refused."""
    assert parse_region("us-east") == "us-east"
    with pytest.raises(UsageError):
        parse_region("US_East")
    with pytest.raises(UsageError):
        parse_tier("lukewarm")
