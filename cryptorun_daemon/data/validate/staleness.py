"""Staleness and clock drift: how far exchange time and receive time disagree.

For a record with exchange time ``ts`` and local receive time ``ingest_ts``
(int nanoseconds, UTC):

* ``ingest_ts - ts > max_skew`` → ``staleness`` / ``stale``: the record took too
  long to reach us (per-tier threshold: hot 5 s, warm and cold 60 s);
* ``ts - ingest_ts > drift_tolerance`` → ``drift`` / ``clock_drift``: the
  exchange stamped a time in our future, so one of the two clocks is wrong —
  a different problem with a different fix, hence a different check name;
* optionally, ``ingest_ts`` later than *now* by more than the tolerance is
  drift of the receiving host's clock.

Records whose timestamps are missing or not integers are the schema check's
business and pass here untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import numpy as np
import pyarrow as pa

from cryptorun_daemon.data.validate.findings import (
    BatchResult,
    ErrorGroup,
    Record,
    RowIndex,
    ValidateFn,
    ValidationError,
    group_from_mask,
)
from cryptorun_daemon.data.validate.tables import int64_chunks

NS_PER_SECOND: Final = 1_000_000_000
DEFAULT_DRIFT_TOLERANCE: Final = 2.0


def _ns(seconds: float) -> int:
    return round(seconds * NS_PER_SECOND)


def _stale_error(ts: int, ingest_ts: int, max_skew_ns: int) -> ValidationError:
    return ValidationError(
        "staleness",
        "ingest_ts",
        ingest_ts - ts,
        f"ingest_ts - ts <= {max_skew_ns} ns",
        "stale",
    )


def _drift_error(ts: int, ingest_ts: int, tolerance_ns: int) -> ValidationError:
    return ValidationError(
        "drift",
        "ts",
        ts - ingest_ts,
        f"ts - ingest_ts <= {tolerance_ns} ns",
        "clock_drift",
    )


def _host_drift_error(ingest_ts: int, now_ns: int, tolerance_ns: int) -> ValidationError:
    return ValidationError(
        "drift",
        "ingest_ts",
        ingest_ts - now_ns,
        f"ingest_ts - now <= {tolerance_ns} ns",
        "clock_drift",
    )


def staleness_check(
    max_skew: float,
    *,
    drift_tolerance: float = DEFAULT_DRIFT_TOLERANCE,
    now_ns: Callable[[], int] | None = None,
) -> ValidateFn:
    """A per-record staleness and drift check (thresholds in seconds).

    Behaviour: drift of ``ts`` ahead of ``ingest_ts`` is reported first (it
    also explains a negative skew), then staleness, then — when ``now_ns`` is
    given — ``ingest_ts`` ahead of the local clock. The ``value`` of an error
    is the offending difference in nanoseconds.
    """
    skew_ns, tolerance_ns = _ns(max_skew), _ns(drift_tolerance)

    def check(record: Record) -> ValidationError | None:
        ts, ingest_ts = record.get("ts"), record.get("ingest_ts")
        if type(ts) is not int or type(ingest_ts) is not int:
            return None
        if ts - ingest_ts > tolerance_ns:
            return _drift_error(ts, ingest_ts, tolerance_ns)
        if ingest_ts - ts > skew_ns:
            return _stale_error(ts, ingest_ts, skew_ns)
        if now_ns is not None:
            now = now_ns()
            if ingest_ts - now > tolerance_ns:
                return _host_drift_error(ingest_ts, now, tolerance_ns)
        return None

    return check


def _int_ns(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Int64 nanoseconds and a validity mask (nulls are left to the schema check)."""
    as_int = column.cast(pa.int64())
    valid = (
        np.ones(len(as_int), dtype=np.bool_)
        if as_int.null_count == 0
        else np.asarray(as_int.is_valid().to_numpy(zero_copy_only=False), dtype=np.bool_)
    )
    if as_int.null_count:
        as_int = as_int.fill_null(0)
    values = np.asarray(as_int.to_numpy(zero_copy_only=False), dtype=np.int64)
    return values, valid


def _surely_clean(table: pa.Table, skew_ns: int, tolerance_ns: int, now_ns: int | None) -> bool:
    """A cheap proof that no row is stale or drifting; ``False`` means "look closer".

    Chunk by chunk on zero-copy views: one subtraction and its min and max,
    the same arithmetic as the full check (``ahead >= -skew`` everywhere is
    ``-ahead <= skew`` everywhere, without negating).
    """
    ts_col, ingest_col = table.column("ts"), table.column("ingest_ts")
    if ts_col.null_count or ingest_col.null_count:
        return False
    if [len(c) for c in ts_col.chunks] != [len(c) for c in ingest_col.chunks]:
        return False
    for ts, ingest in zip(int64_chunks(ts_col), int64_chunks(ingest_col), strict=True):
        if not ts.size:
            continue
        with np.errstate(over="ignore"):
            ahead = ts - ingest
        if ahead.max() > tolerance_ns or ahead.min() < -skew_ns:
            return False
        if now_ns is not None and ingest.max() - now_ns > tolerance_ns:
            return False
    return True


def staleness_batch(
    table: pa.Table,
    max_skew: float,
    *,
    drift_tolerance: float = DEFAULT_DRIFT_TOLERANCE,
    now_ns: int | None = None,
) -> BatchResult:
    """The batch form of :func:`staleness_check` over a table with ``ts`` and ``ingest_ts``.

    Groups come in the per-record order (drift of ``ts``, staleness, host
    drift) and are mutually exclusive, so each flagged row has exactly the
    error the per-record form gives it.
    """
    skew_ns, tolerance_ns = _ns(max_skew), _ns(drift_tolerance)
    if _surely_clean(table, skew_ns, tolerance_ns, now_ns):
        return BatchResult(mask=np.zeros(table.num_rows, dtype=np.bool_))
    ts, ts_ok = _int_ns(table.column("ts"))
    ingest, ingest_ok = _int_ns(table.column("ingest_ts"))
    valid = ts_ok & ingest_ok
    # Differences of real epoch-nanosecond times are far from int64 overflow;
    # only garbage near the int64 limits could wrap, and numpy must not warn.
    with np.errstate(over="ignore"):
        ahead = ts - ingest
    drift = valid & (ahead > tolerance_ns)
    stale = valid & ~drift & (-ahead > skew_ns)
    masks = [drift, stale]
    if now_ns is not None:
        masks.append(valid & ~drift & ~stale & (ingest - now_ns > tolerance_ns))

    def diffs(rows: RowIndex, sign: int) -> list[int]:
        return [int(v) for v in (sign * (ts[rows] - ingest[rows])).tolist()]

    built: list[ErrorGroup | None] = [
        group_from_mask(
            drift,
            check="drift",
            field="ts",
            reason="clock_drift",
            expected=f"ts - ingest_ts <= {tolerance_ns} ns",
            values=lambda r: diffs(r, 1),
        ),
        group_from_mask(
            stale,
            check="staleness",
            field="ingest_ts",
            reason="stale",
            expected=f"ingest_ts - ts <= {skew_ns} ns",
            values=lambda r: diffs(r, -1),
        ),
    ]
    if now_ns is not None:
        built.append(
            group_from_mask(
                masks[2],
                check="drift",
                field="ingest_ts",
                reason="clock_drift",
                expected=f"ingest_ts - now <= {tolerance_ns} ns",
                values=lambda r: [int(v) - now_ns for v in ingest[r].tolist()],
            )
        )
    mask = np.logical_or.reduce(masks) if masks else np.zeros(table.num_rows, dtype=np.bool_)
    return BatchResult(mask=mask, groups=tuple(g for g in built if g is not None))
