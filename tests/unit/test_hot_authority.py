"""Source authority: local first, peers by config order, freshness gate, counted switches."""

from __future__ import annotations

from cryptorun_daemon.hot.authority import SourceAuthority
from cryptorun_daemon.metrics import Metrics

S = 1_000_000_000


def test_local_is_authoritative_while_fresh() -> None:
    """With every source fresh, the local region wins."""
    auth = SourceAuthority("eu", ["eu", "us", "ap"], gate_seconds=5)
    auth.observe("us", "kraken", "BTC/USD", 1 * S)
    auth.observe("eu", "kraken", "BTC/USD", 1 * S)
    auth.evaluate(2 * S)
    assert auth.current[("kraken", "BTC/USD")] == "eu"


def test_stale_local_fails_over_to_first_fresh_peer_and_back() -> None:
    """Local stale past the gate → first fresh peer; local fresh again → back. Both counted."""
    metrics = Metrics()
    auth = SourceAuthority("eu", ["eu", "us", "ap"], gate_seconds=5, metrics=metrics)
    auth.observe("eu", "kraken", "BTC/USD", 1 * S)
    auth.observe("ap", "kraken", "BTC/USD", 9 * S)
    auth.observe("us", "kraken", "BTC/USD", 9 * S)
    auth.evaluate(10 * S)
    assert auth.current[("kraken", "BTC/USD")] == "us"
    auth.observe("eu", "kraken", "BTC/USD", 11 * S)
    auth.evaluate(12 * S)
    assert auth.current[("kraken", "BTC/USD")] == "eu"
    assert auth.switch_count == 2
    value = metrics.registry.get_sample_value(
        "cryptorun_hot_source_switches_total", {"region": "eu", "venue": "kraken"}
    )
    assert value == 2
    assert auth.source_at("kraken", "BTC/USD", 11 * S) == "us"
    assert auth.source_at("kraken", "BTC/USD", 12 * S) == "eu"


def test_nobody_fresh_keeps_the_least_stale_source() -> None:
    """When every source is stale the freshest one stays authoritative (no flapping)."""
    auth = SourceAuthority("eu", ["eu", "us"], gate_seconds=1)
    auth.observe("eu", "kraken", "ETH/USD", 1 * S)
    auth.observe("us", "kraken", "ETH/USD", 3 * S)
    auth.evaluate(100 * S)
    assert auth.current[("kraken", "ETH/USD")] == "us"


def test_status_lists_freshness_in_preference_order() -> None:
    """Status shows sources, the authoritative one and per-source freshness."""
    auth = SourceAuthority("eu", ["eu", "us"], gate_seconds=5, now_ns=lambda: 4 * S)
    auth.observe("us", "kraken", "BTC/USD", 3 * S)
    auth.observe("eu", "kraken", "BTC/USD", 2 * S)
    pair = auth.status()["pairs"][0]
    assert list(pair["freshness_seconds"]) == ["eu", "us"]
    assert pair["freshness_seconds"]["us"] == 1.0


def test_pairs_from_peers_beyond_the_cap_are_counted_and_dropped() -> None:
    """Once max_markets pairs are tracked, a peer's new pair is not tracked (no dict entry,
    no switch-counter label) but counted per origin; local pairs are still tracked."""
    metrics = Metrics()
    auth = SourceAuthority("eu", ["eu", "us"], gate_seconds=5, metrics=metrics, max_markets=2)
    for n in range(1000):
        auth.observe("us", f"venue{n}", "BTC/USD", 1 * S)
    auth.observe("eu", "local", "ETH/USD", 1 * S)
    auth.evaluate(100 * S)
    tracked = {(p["venue"], p["symbol"]) for p in auth.status()["pairs"]}
    assert tracked == {("venue0", "BTC/USD"), ("venue1", "BTC/USD"), ("local", "ETH/USD")}
    assert auth.source_at("venue999", "BTC/USD", 1 * S) is None
    dropped = metrics.registry.get_sample_value(
        "cryptorun_hot_untracked_markets_total", {"region": "eu", "origin": "us"}
    )
    assert dropped == 998
    assert auth.status()["untracked_observations"] == 998
