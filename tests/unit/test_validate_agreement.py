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
    st.sampled_from([128, 7, 3, 1]),
)
def test_anomaly_forms_agree(
    path: tuple[list[float], list[float]],
    window: int,
    min_samples: int,
    horizon: int,
    level_shifts: bool,
    tick: float,
    baseline_samples: int,
) -> None:
    """The stateful per-record check and the batch flag the same rows for the same reason.

    Small ``baseline_samples`` make the baseline estimator subsample these
    short windows (stride > 1), so both forms are held to the same estimator.
    """
    prices, qty = path
    n = len(prices)
    params = AnomalyParams(
        AnomalyConfig(window=window, min_samples=min_samples, min_relative_move=0.0005),
        spike_horizon=horizon,
        flag_level_shifts=level_shifts,
        tick_size=tick,
        volume_min_ratio=100.0,
        baseline_samples=baseline_samples,
    )
    rows = [
        {
            "venue": "kraken",
            "symbol": "BTC/USD" if i % 3 else "ETH/USD",
            "price": p,
            "qty": q,
            "ts": T0 + i,
            "ingest_ts": T0 + i,
            "side": "buy",
            "trade_id": i,
            "origin": "eu-central",
            "seq": i,
        }
        for i, (p, q) in enumerate(zip(prices, qty, strict=True))
    ]
    table = pa.Table.from_pylist(rows, schema=arrow_schema("trade"))
    result = anomaly_batch(table, params)
    batch = {(int(row), g.field, g.reason) for g in result.groups for row in g.rows.tolist()}
    assert batch == _per_record_findings(table, params)
    assert result.mask.sum() == len({row for row, _, _ in batch}) <= n


def _per_record_findings(table: pa.Table, params: AnomalyParams) -> set[tuple[int, str, str]]:
    """``(row, field, reason)`` of every finding the per-record check settles over ``table``."""
    check = anomaly_check(params)
    positions: dict[tuple[str, str], list[int]] = {}
    found = set()
    for i, record in enumerate(records_from_table(table)):
        stream = positions.setdefault((record["venue"], record["symbol"]), [])
        stream.append(i)
        for error in check.observe(record):
            found.add((stream[len(stream) - 1 - error.lag], error.field, error.reason))
    return found


@settings(max_examples=25, deadline=None)
@given(
    st.integers(min_value=0, max_value=2**32 - 1),
    st.sampled_from([1, 3]),
    st.integers(min_value=0, max_value=6),
)
def test_anomaly_forms_agree_on_chunked_partitions_with_default_windows(
    seed: int, symbols: int, spikes: int
) -> None:
    """With the default 500-sample window (a 4-stride estimator sample), chunked
    tables and interleaved symbols, both forms flag the same rows."""
    rng = np.random.default_rng(seed)
    n = 6_000
    price = np.round((100.0 + np.cumsum(rng.normal(0.0, 0.02, n))) / 0.01) * 0.01
    qty = rng.lognormal(0.0, 1.0, n)
    for at in rng.integers(0, n, spikes).tolist():
        price[at] *= float(rng.choice([1.02, 0.97]))
        qty[at] *= float(rng.choice([1.0, 1e7]))
    names = np.array(["BTC/USD", "ETH/USD", "SOL/USD"])[rng.integers(0, symbols, n)]
    ts = T0 + np.arange(n, dtype=np.int64)
    whole = pa.table(
        {
            "ts": pa.array(ts, pa.timestamp("ns", tz="UTC")),
            "venue": ["kraken"] * n,
            "symbol": names,
            "side": ["buy"] * n,
            "price": price,
            "qty": qty,
            "trade_id": np.arange(n),
            "ingest_ts": pa.array(ts, pa.timestamp("ns", tz="UTC")),
            "origin": ["eu-central"] * n,
            "seq": np.arange(n),
        },
        schema=arrow_schema("trade"),
    )
    # Record batches of uneven sizes, as a Parquet reader hands them back.
    cuts = sorted(rng.integers(1, n, 4).tolist())
    chunked = pa.Table.from_batches(
        [
            b
            for a, b_ in zip([0, *cuts], [*cuts, n], strict=True)
            for b in whole.slice(a, b_ - a).to_batches()
        ]
    )
    params = AnomalyParams()
    result = anomaly_batch(chunked, params)
    batch = {(int(row), g.field, g.reason) for g in result.groups for row in g.rows.tolist()}
    assert batch == _per_record_findings(whole, params)
    assert batch == {
        (int(row), g.field, g.reason)
        for g in anomaly_batch(whole, params).groups
        for row in g.rows.tolist()
    }


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.floats(min_value=-0.05, max_value=0.05), min_size=1, max_size=400),
    st.integers(min_value=1, max_value=50),
    st.integers(min_value=1, max_value=20),
    st.sampled_from([128, 5, 2]),
    st.integers(min_value=1, max_value=400),
)
def test_detector_run_equals_push(
    returns: list[float], window: int, min_samples: int, baseline_samples: int, cut: int
) -> None:
    """Driving the detector over an array (in one piece or two) equals pushing one by one."""
    raws = np.exp(np.cumsum(np.asarray(returns)))
    params = DetectorParams(
        window=window,
        min_samples=min_samples,
        threshold=3.5,
        guard=0.0005,
        floor=1e-4,
        baseline_samples=baseline_samples,
    )
    batch = SeriesDetector(params, "return").run(raws)
    pieces = SeriesDetector(params, "return")
    cut = min(cut, len(raws))
    split = pieces.run(raws[:cut]) + pieces.run(raws[cut:], offset=cut)
    one = SeriesDetector(params, "return")
    pushed = []
    for i, raw in enumerate(raws.tolist()):
        pushed += one.push(i, raw)
    assert batch == pushed
    assert split == pushed
