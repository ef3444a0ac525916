"""The event-loop lag tick: a blocked loop shows up as a late tick."""

from __future__ import annotations

import asyncio
import contextlib
import time

from prometheus_client import CollectorRegistry

from cryptorun_daemon.metrics import Metrics
from cryptorun_daemon.runtime.loop_lag import measure_loop_lag


async def test_a_blocked_loop_is_observed_as_lateness() -> None:
    """Blocking the loop for 0.3 s while a 0.05 s tick sleeps records a tick at least
    0.25 s late in cryptorun_event_loop_lag_seconds (a lower bound: no upper timing)."""
    metrics = Metrics(CollectorRegistry())
    task = asyncio.create_task(
        measure_loop_lag(metrics.event_loop_lag_seconds, interval=0.05), name="loop-lag"
    )
    await asyncio.sleep(0)  # let the tick start its sleep
    time.sleep(0.3)  # blocking the loop is the point of this test
    await asyncio.sleep(0.1)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    registry = metrics.registry
    count = registry.get_sample_value("cryptorun_event_loop_lag_seconds_count")
    total = registry.get_sample_value("cryptorun_event_loop_lag_seconds_sum")
    late = registry.get_sample_value("cryptorun_event_loop_lag_seconds_bucket", {"le": "0.25"})
    assert count is not None
    assert total is not None
    assert late is not None
    assert count >= 1
    assert total >= 0.25
    assert late < count  # at least one tick fell past 0.25 s
