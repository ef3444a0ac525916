"""Property tests: the per-record and the batch forms of every check agree on the same data."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from cryptorun_daemon.config.model import AnomalyConfig
from cryptorun_daemon.data.validate import (
    AnomalyParams,
    anomaly_batch,
    anomaly_check,
    arrow_schema,
    records_from_table,
    schema_batch,
    schema_check,
    staleness_batch,
    staleness_check,
)
from cryptorun_daemon.data.validate.robust import DetectorParams, SeriesDetector

T0 = 1_756_684_800_000_000_000
S = 1_000_000_000

prices = st.one_of(
    st.floats(min_value=1.0, max_value=2.0),
    st.sampled_from([0.0, -1.0, math.nan, math.inf, -math.inf]),
)
quantities = st.one_of(st.floats(min_value=0.0, max_value=10.0), st.sampled_from([-1.0, math.nan]))
skews = st.integers(min_value=-10 * S, max_value=120 * S)


@st.composite
def trade_rows(draw: st.DrawFn) -> list[dict[str, Any]]:
    n = draw(st.integers(min_value=1, max_value=40))
    rows = []
    for i in range(n):
        ts = T0 + i * S
        rows.append(
            {
                "ts": ts,
                "venue": draw(st.sampled_from(["kraken", "Bad Venue"])),
                "symbol": draw(st.sampled_from(["BTC/USD", "ETH/USD", "BTCUSD"])),
                "side": draw(st.sampled_from(["buy", "sell", "hold"])),
                "price": draw(prices),
                "qty": draw(quantities),
                "trade_id": i,
                "ingest_ts": ts + draw(skews),
                "origin": draw(st.sampled_from(["eu-central", "US"])),
                "seq": draw(st.integers(min_value=-1, max_value=5)),
            }
        )
    return rows


def _first_errors(check: Any, records: list[dict[str, Any]]) -> dict[int, tuple[str, str, str]]:
    out = {}
    for i, record in enumerate(records):
        error = check(record)
        if error is not None:
            out[i] = error.key
    return out


@settings(max_examples=150, deadline=None)
@given(trade_rows())
def test_schema_forms_agree(rows: list[dict[str, Any]]) -> None:
    """Every row gets the same first schema error (or none) from both forms."""
    table = pa.Table.from_pylist(rows, schema=arrow_schema("trade"))
    result = schema_batch(table, "trade")
    batch = {row: group.key for row, group in result.first_group_per_row().items()}
    assert batch == _first_errors(schema_check("trade"), records_from_table(table))
    assert result.mask.tolist() == [i in batch for i in range(len(rows))]


@settings(max_examples=150, deadline=None)
@given(trade_rows(), st.sampled_from([5.0, 60.0]), st.sampled_from([0.0, 2.0]))
def test_staleness_forms_agree(rows: list[dict[str, Any]], skew: float, drift: float) -> None:
    """Stale and drifting rows are the same, with the same check and reason, in both forms."""
    table = pa.Table.from_pylist(rows, schema=arrow_schema("trade"))
    result = staleness_batch(table, skew, drift_tolerance=drift)
    batch = {row: group.key for row, group in result.first_group_per_row().items()}
    check = staleness_check(skew, drift_tolerance=drift)
    assert batch == _first_errors(check, records_from_table(table))


@st.composite
def price_paths(draw: st.DrawFn) -> tuple[list[float], list[float]]:
    """Random walks on a tick grid with injected spikes, steps, flat runs and bad values."""
    n = draw(st.integers(min_value=1, max_value=300))
    seed = draw(st.integers(min_value=0, max_value=2**32 - 1))
    rng = np.random.default_rng(seed)
    tick = draw(st.sampled_from([0.01, 0.5, 1.0]))
    walk = 1_000.0 + np.cumsum(rng.normal(0.0, draw(st.sampled_from([0.0, 0.3, 2.0])), n))
    path = np.round(walk / tick) * tick
    qty = rng.lognormal(0.0, 1.0, n)
    for _ in range(draw(st.integers(min_value=0, max_value=8))):
        at = draw(st.integers(min_value=0, max_value=n - 1))
        kind = draw(st.sampled_from(["spike", "step", "bad", "whale", "flat"]))
        if kind == "spike":
            width = draw(st.integers(min_value=1, max_value=5))
            path[at : at + width] *= draw(st.sampled_from([1.03, 0.95, 1.2]))
        elif kind == "step":
            path[at:] *= draw(st.sampled_from([1.02, 0.9]))
        elif kind == "bad":
            path[at] = draw(st.sampled_from([math.nan, -1.0, 0.0]))
        elif kind == "whale":
            qty[at] *= draw(st.sampled_from([1e4, 1e7]))
        else:
            path[at:] = path[at]
    return path.tolist(), qty.tolist()


@settings(max_examples=200, deadline=None)
@given(
    price_paths(),
    st.integers(min_value=1, max_value=40),
    st.integers(min_value=1, max_value=30),
    st.integers(min_value=1, max_value=4),
    st.booleans(),
    st.sampled_from([0.0, 0.5]),
)
def test_anomaly_forms_agree(
    path: tuple[list[float], list[float]], window: int, min_samples: int, horizon: int,
    level_shifts: bool, tick: float,
) -> None:
    """The stateful per-record check and the batch flag the same rows for the same reason."""
    prices, qty = path
    n = len(prices)
    params = AnomalyParams(
        AnomalyConfig(window=window, min_samples=min_samples, min_relative_move=0.0005),
        spike_horizon=horizon, flag_level_shifts=level_shifts, tick_size=tick,
        volume_min_ratio=100.0,
    )
    rows = [
        {"venue": "kraken", "symbol": "BTC/USD" if i % 3 else "ETH/USD", "price": p, "qty": q,
         "ts": T0 + i, "ingest_ts": T0 + i, "side": "buy", "trade_id": i, "origin": "eu-central",
         "seq": i}
        for i, (p, q) in enumerate(zip(prices, qty, strict=True))
    ]
    table = pa.Table.from_pylist(rows, schema=arrow_schema("trade"))
    result = anomaly_batch(table, params)
    batch = {(int(row), g.field, g.reason) for g in result.groups for row in g.rows.tolist()}
    check = anomaly_check(params)
    positions: dict[str, list[int]] = {}
    per_record = set()
    for i, record in enumerate(records_from_table(table)):
        positions.setdefault(record["symbol"], []).append(i)
        stream = positions[record["symbol"]]
        for error in check.observe(record):
            per_record.add((stream[len(stream) - 1 - error.lag], error.field, error.reason))
    assert batch == per_record
    assert result.mask.sum() == len({row for row, _, _ in batch}) <= n


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.floats(min_value=-0.05, max_value=0.05), min_size=1, max_size=400),
    st.integers(min_value=1, max_value=50),
    st.integers(min_value=1, max_value=20),
)
def test_detector_run_equals_push(returns: list[float], window: int, min_samples: int) -> None:
    """Driving the detector over an array equals pushing the samples one by one."""
    levels = np.cumsum(np.asarray(returns))
    raws = np.exp(levels)
    params = DetectorParams(window=window, min_samples=min_samples, threshold=3.5,
                            guard=0.0005, floor=1e-4)
    batch = SeriesDetector(params, "return").run(levels, raws, np.arange(len(levels)))
    one = SeriesDetector(params, "return")
    pushed = []
    for i, (level, raw) in enumerate(zip(levels.tolist(), raws.tolist(), strict=True)):
        pushed += one.push(i, level, raw)
    assert batch == pushed
