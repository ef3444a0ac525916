"""The quarantine recount's pacing: its tree walk is a bounded share of the time."""

from __future__ import annotations

from cryptorun_daemon.data.quarantine_status import MAX_WALK_SHARE, REFRESH_SECONDS, refresh_delay


def test_cheap_walks_recount_every_refresh_period() -> None:
    """A walk that takes milliseconds (a small store) is repeated every REFRESH_SECONDS."""
    assert refresh_delay(0.01) == REFRESH_SECONDS


def test_a_long_walk_waits_long_enough_to_stay_a_bounded_share() -> None:
    """A walk of a year-sized store (tens of seconds) waits so walking is at most
    MAX_WALK_SHARE of the wall time, instead of restarting after a fixed pause."""
    for walk in (1.0, 30.0, 120.0):
        delay = refresh_delay(walk)
        assert walk / (walk + delay) <= MAX_WALK_SHARE + 1e-9
