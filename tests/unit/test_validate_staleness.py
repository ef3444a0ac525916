"""Staleness (late records) and clock drift (records from the future), per record and batch."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from cryptorun_daemon.data.validate import arrow_schema, staleness_batch, staleness_check

T0 = 1_756_684_800_000_000_000
S = 1_000_000_000


def rec(ts: int, ingest_ts: int) -> dict[str, Any]:
    return {
        "ts": ts,
        "venue": "kraken",
        "symbol": "BTC/USD",
        "side": "buy",
        "price": 1.0,
        "qty": 1.0,
        "trade_id": 1,
        "ingest_ts": ingest_ts,
        "origin": "eu-central",
        "seq": 0,
    }


def test_skew_within_threshold_passes() -> None:
    """A record received 4.9 s after its exchange time passes the 5 s hot threshold."""
    assert staleness_check(5.0)(rec(T0, T0 + 49 * S // 10)) is None


def test_skew_beyond_threshold_is_stale() -> None:
    """A record received 6 s late under a 5 s threshold is ``stale`` with the skew as value."""
    error = staleness_check(5.0)(rec(T0, T0 + 6 * S))
    assert error is not None
    assert (error.check, error.field, error.reason, error.value) == (
        "staleness",
        "ingest_ts",
        "stale",
        6 * S,
    )


def test_future_timestamp_is_drift_not_staleness() -> None:
    """An exchange time 3 s ahead of receive time is ``drift``/``clock_drift``."""
    error = staleness_check(5.0, drift_tolerance=2.0)(rec(T0 + 3 * S, T0))
    assert error is not None
    assert (error.check, error.field, error.reason, error.value) == (
        "drift",
        "ts",
        "clock_drift",
        3 * S,
    )


def test_future_within_tolerance_passes() -> None:
    """A small negative skew (1 s, tolerance 2 s) is normal clock jitter."""
    assert staleness_check(5.0, drift_tolerance=2.0)(rec(T0 + S, T0)) is None


def test_receive_time_ahead_of_local_clock_is_drift() -> None:
    """With a clock, an ingest time beyond now + tolerance is drift of the receiving host."""
    check = staleness_check(5.0, drift_tolerance=2.0, now_ns=lambda: T0)
    error = check(rec(T0 + 10 * S, T0 + 10 * S))
    assert error is not None
    assert (error.check, error.field) == ("drift", "ingest_ts")


def test_non_integer_timestamps_are_left_to_the_schema_check() -> None:
    """Missing or mistyped timestamps are not a staleness finding."""
    check = staleness_check(5.0)
    assert check({"ts": None, "ingest_ts": T0}) is None
    assert check({"ingest_ts": T0}) is None


def test_batch_matches_per_record() -> None:
    """The batch form flags the same rows with the same check and reason, stale and drift apart."""
    rows = [rec(T0, T0), rec(T0, T0 + 61 * S), rec(T0 + 3 * S, T0), rec(T0, T0 + 60 * S)]
    table = pa.Table.from_pylist(rows, schema=arrow_schema("trade"))
    result = staleness_batch(table, 60.0, drift_tolerance=2.0)
    assert result.mask.tolist() == [False, True, True, False]
    assert [(g.check, g.reason, g.rows.tolist()) for g in result.groups] == [
        ("drift", "clock_drift", [2]),
        ("staleness", "stale", [1]),
    ]
    check = staleness_check(60.0, drift_tolerance=2.0)
    for row, group in result.first_group_per_row().items():
        error = check(rows[row])
        assert error is not None
        assert error.key == group.key
    assert result.groups[1].examples[0][1].value == 61 * S


def test_batch_ignores_null_timestamps() -> None:
    """Rows with a null timestamp are not flagged by staleness (schema reports them)."""
    loose = pa.schema([f.with_nullable(True) for f in arrow_schema("trade")])
    table = pa.Table.from_pylist([rec(T0, T0 + 100 * S), {**rec(T0, T0), "ts": None}], schema=loose)
    assert staleness_batch(table, 5.0).mask.tolist() == [True, False]
