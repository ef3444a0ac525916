"""Robust anomaly detection: spikes flagged, noise, ticks, warm-up and level shifts left alone."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from cryptorun_daemon.config.model import AnomalyConfig
from cryptorun_daemon.data.validate import (
    AnomalyParams,
    anomaly_batch,
    anomaly_check,
    arrow_schema,
)
from cryptorun_daemon.data.validate.robust import (
    BASELINE_SAMPLES,
    MEANAD_TO_SIGMA,
    baselines,
    estimator_sample,
)

T0 = 1_756_684_800_000_000_000
# The guarantee stated in docs/VALIDATION.md for a million trades of Gaussian
# micro-noise (sigma <= 1 bp) with default settings: at most this many flags.
NOISE_FLAG_GUARANTEE = 5


def trades(prices: np.ndarray, qty: np.ndarray | None = None, symbol: str = "BTC/USD") -> pa.Table:
    n = len(prices)
    ts = T0 + np.arange(n, dtype=np.int64) * 1_000_000
    return pa.table(
        {
            "ts": pa.array(ts, pa.timestamp("ns", tz="UTC")),
            "venue": pa.array(["kraken"] * n),
            "symbol": pa.array([symbol] * n),
            "side": pa.array(["buy"] * n),
            "price": pa.array(prices, pa.float64()),
            "qty": pa.array(np.ones(n) if qty is None else qty, pa.float64()),
            "trade_id": pa.array(np.arange(n), pa.int64()),
            "ingest_ts": pa.array(ts, pa.timestamp("ns", tz="UTC")),
            "origin": pa.array(["eu-central"] * n),
            "seq": pa.array(np.arange(n), pa.int64()),
        },
        schema=arrow_schema("trade"),
    )


def flagged(table: pa.Table, params: AnomalyParams | None = None) -> dict[int, tuple[str, str]]:
    result = anomaly_batch(table, params)
    return {row: (g.field, g.reason) for row, g in result.first_group_per_row().items()}


def noisy(
    n: int, *, price: float = 60_000.0, sigma: float = 3.0, tick: float = 0.1, seed: int = 7
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.round((price + rng.normal(0.0, sigma, n)) / tick) * tick


@pytest.mark.parametrize("baseline_samples", [BASELINE_SAMPLES, 500])
def test_injected_spikes_are_flagged_at_their_rows(baseline_samples: int) -> None:
    """Single-print spikes of 1-3% in noisy prices are flagged exactly at the spiked rows,
    with the default stride-sample baseline and with the exact whole-window one."""
    prices = noisy(5_000)
    spikes = {800: 1.02, 2_400: 0.97, 4_100: 1.01}
    for row, factor in spikes.items():
        prices[row] *= factor
    params = AnomalyParams(baseline_samples=baseline_samples)
    assert flagged(trades(prices), params) == dict.fromkeys(spikes, ("price", "spike"))


def test_baseline_estimator_is_a_stride_sample_counting_back_from_the_newest() -> None:
    """A 500-value window is estimated from every 4th value ending at the newest
    (125 values); windows of at most ``baseline_samples`` values are used whole."""
    window = np.arange(500.0)
    assert estimator_sample(window, 128).tolist() == np.arange(3.0, 500.0, 4.0).tolist()
    assert estimator_sample(window, 500).tolist() == window.tolist()
    assert estimator_sample(np.arange(128.0), 128).tolist() == np.arange(128.0).tolist()
    assert estimator_sample(np.arange(129.0), 128).tolist() == np.arange(0.0, 129.0, 2.0).tolist()


def test_multi_print_spike_within_horizon_is_flagged_whole() -> None:
    """A glitch lasting 3 prints (the default spike horizon) flags all 3 rows."""
    prices = noisy(2_000)
    prices[1_000:1_003] *= 1.05
    assert sorted(flagged(trades(prices))) == [1_000, 1_001, 1_002]


@pytest.mark.parametrize("baseline_samples", [BASELINE_SAMPLES, 500])
def test_million_rows_of_micro_noise_stay_under_the_guarantee(baseline_samples: int) -> None:
    """1,000,000 trades of 0.5 bp Gaussian noise on a 0.1 tick give at most 5 flags (observed 0),
    whether baselines come from the default stride sample or the whole window."""
    n = 1_000_000
    rng = np.random.default_rng(11)
    table = trades(noisy(n, sigma=3.0, tick=0.1, seed=11), qty=rng.lognormal(-3.0, 1.0, n))
    result = anomaly_batch(table, AnomalyParams(baseline_samples=baseline_samples))
    assert result.flagged <= NOISE_FLAG_GUARANTEE
    assert result.flagged == 0


def test_micro_noise_with_mostly_flat_prices_takes_the_mad_zero_path() -> None:
    """Noise below one tick (most returns 0, MAD = 0) on a coarse-tick coin does not flag."""
    prices = noisy(200_000, price=0.5, sigma=0.00004, tick=0.0001, seed=3)
    assert flagged(trades(prices)) == {}


def test_flat_prices_then_one_tick_do_not_flag() -> None:
    """A flat stretch followed by a one-tick step, or a one-tick blip, is not an anomaly."""
    step = np.full(2_000, 60_000.0)
    step[1_500:] += 0.1
    blip = np.full(2_000, 60_000.0)
    blip[1_500] += 0.1
    assert flagged(trades(step)) == {}
    assert flagged(trades(blip)) == {}


def test_coarse_tick_blip_is_not_flagged_when_tick_is_known() -> None:
    """On a 20 bp tick, a flat stretch then a one-tick blip passes once tick_size is set."""
    prices = np.full(2_000, 0.05)
    prices[1_500] = 0.0501
    params = AnomalyParams(tick_size=0.0001)
    assert flagged(trades(prices), params) == {}


def test_mad_zero_falls_back_to_mean_absolute_deviation_then_floor() -> None:
    """MAD = 0 uses 1.253314·MeanAD (at least the observed tick); all-flat uses the floor."""
    window = np.zeros((1, 100))
    window[0, :10] = 2e-4  # 10 moves among 90 flat: MAD 0, MeanAD 2e-5, observed tick 2e-4
    _, sigma = baselines(window, np.array([1e-4]))
    assert sigma[0] == max(MEANAD_TO_SIGMA * 2e-5, 2e-4)
    _, sigma = baselines(np.zeros((1, 100)), np.array([1e-4]))
    assert sigma[0] == 1e-4
    window = np.zeros((1, 100))
    window[0, :60] = np.linspace(-1e-3, 1e-3, 60)
    _, sigma = baselines(window, np.array([1e-4]))
    assert sigma[0] > 1e-4  # MAD > 0: the usual MAD / 0.6745


def test_spike_in_flat_market_still_flagged_through_fallbacks() -> None:
    """With MAD = 0 and MeanAD = 0 the floor keeps a real 2% spike detectable."""
    prices = np.full(1_000, 60_000.0)
    prices[700] *= 1.02
    assert flagged(trades(prices)) == {700: ("price", "spike")}


def test_no_flags_during_warm_up() -> None:
    """A spike before min_samples accepted samples is not judged; the same spike later is."""
    params = AnomalyParams(AnomalyConfig(min_samples=50))
    prices = noisy(400)
    prices[20] *= 1.05
    prices[300] *= 1.05
    assert flagged(trades(prices), params) == {300: ("price", "spike")}


def test_level_shift_is_not_an_anomaly_by_default() -> None:
    """A jump that stays (a new regime) is accepted; optionally its first row is flagged."""
    prices = noisy(3_000)
    prices[1_500:] *= 1.03
    assert flagged(trades(prices)) == {}
    shifts = flagged(trades(prices), AnomalyParams(flag_level_shifts=True))
    assert shifts == {1_500: ("price", "level_shift")}


def test_flagged_points_do_not_move_the_baseline() -> None:
    """After a spike the next print is judged against the pre-spike price, so it is not flagged."""
    prices = noisy(2_000)
    for row in range(600, 1_800, 100):
        prices[row] *= 1.04
    assert sorted(flagged(trades(prices))) == list(range(600, 1_800, 100))


def test_minimum_relative_move_guards_calm_markets() -> None:
    """In an ultra-calm market a 3 bp jump is a huge z-score but below the 5 bp minimum move."""
    prices = noisy(2_000, sigma=0.1, tick=0.01)
    prices[1_000] *= 1.0003
    assert flagged(trades(prices)) == {}


def test_oversized_trade_is_a_volume_anomaly_but_a_whale_is_not() -> None:
    """A size a million times the median is flagged on ``qty``; 300 times is not."""
    rng = np.random.default_rng(5)
    qty = rng.lognormal(-3.0, 0.5, 3_000)
    qty[1_000] = float(np.median(qty)) * 1e6
    qty[2_000] = float(np.median(qty)) * 300
    assert flagged(trades(noisy(3_000), qty)) == {1_000: ("qty", "spike")}


def test_per_record_form_reports_spike_on_the_reverting_record() -> None:
    """The stateful check settles a spike when the price reverts, with lag pointing back."""
    prices = noisy(1_000)
    prices[500] *= 1.02
    check = anomaly_check(AnomalyConfig())
    rows = trades(prices).to_pylist()
    seen: list[tuple[int, Any]] = []
    for index, row in enumerate(rows):
        row["ts"] = row["ingest_ts"] = 0  # timestamps are irrelevant to this check
        for error in check.observe(row):
            seen.append((index - error.lag, error.reason))
    assert seen == [(500, "spike")]
    assert check(rows[0]) is None


def test_streams_are_judged_per_symbol() -> None:
    """Interleaved symbols at very different prices do not disturb each other's baseline."""
    btc, eth = noisy(2_000), noisy(2_000, price=3_000.0, sigma=0.2, tick=0.01)
    eth[1_200] *= 1.05
    combined = pa.concat_tables([trades(btc), trades(eth, symbol="ETH/USD")])
    order = np.argsort(np.concatenate([np.arange(2_000) * 2, np.arange(2_000) * 2 + 1]))
    interleaved = combined.take(pa.array(order))
    assert flagged(interleaved) == {2 * 1_200 + 1: ("price", "spike")}


def test_book_mid_price_spike() -> None:
    """Books are judged on their mid price; a spiked top of book is flagged on ``mid``."""
    mids = noisy(1_000)
    mids[600] *= 1.03
    n = len(mids)
    ts = pa.array(T0 + np.arange(n, dtype=np.int64), pa.timestamp("ns", tz="UTC"))
    table = pa.table(
        {
            "ts": ts,
            "venue": ["kraken"] * n,
            "symbol": ["BTC/USD"] * n,
            "bids_px": [[m - 0.5, m - 1.0] for m in mids],
            "bids_qty": [[1.0, 1.0]] * n,
            "asks_px": [[m + 0.5, m + 1.0] for m in mids],
            "asks_qty": [[1.0, 1.0]] * n,
            "checksum": pa.nulls(n, pa.int64()),
            "suspect": [False] * n,
            "ingest_ts": ts,
            "origin": ["eu-central"] * n,
            "seq": np.arange(n),
        },
        schema=arrow_schema("book"),
    )
    result = anomaly_batch(table, dataset="book")
    assert [(g.field, g.rows.tolist()) for g in result.groups] == [("mid", [600])]
