"""How late the event loop runs: the one owner of ``cryptorun_event_loop_lag_seconds``.

A tick sleeps ``interval`` seconds and measures how much later than asked it
woke up. Anything that holds the loop (a big JSON document rendered inline, a
blocking file call, a catalog scan that should be in a thread) shows up as
lateness of the next tick, whatever code caused it. The histogram's p99 is
the figure the warm/cold benchmark reports (target: under 50 ms).
"""

from __future__ import annotations

import asyncio
import time
from typing import Final

from prometheus_client import Histogram

#: Ten ticks a second: fine enough to see a 50 ms stall, cheap enough to ignore.
TICK: Final = 0.1


async def measure_loop_lag(histogram: Histogram, *, interval: float = TICK) -> None:
    """Observe the lateness of every tick into ``histogram``, forever.

    Error handling: none expected; cancellation ends it (the daemon's
    supervisor owns the task). Resource handling: holds nothing but a timer.
    """
    while True:
        asked = time.monotonic() + interval
        await asyncio.sleep(interval)
        histogram.observe(max(0.0, time.monotonic() - asked))
