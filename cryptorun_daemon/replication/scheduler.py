"""Run one replication pass per (rule, destination) periodically, never two at once.

The interval follows the lag SLO: a pass every SLO/4 (clamped to
[0.5 s, 60 s]) leaves room for a failed pass and a retry before the SLO is
breached. ±10 % jitter keeps many schedulers from hitting a peer in lockstep.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")

MIN_INTERVAL = 0.5
MAX_INTERVAL = 60.0


def interval_for_slo(lag_slo: float) -> float:
    return min(MAX_INTERVAL, max(MIN_INTERVAL, lag_slo / 4))


class PassScheduler(Generic[T]):
    """Calls ``run_pass`` every ``interval`` (jittered); :meth:`trigger` runs one now.

    At most one pass is in flight: a trigger during a pass waits for it and
    then runs a fresh one (so its caller sees state from after the trigger).
    Error handling: exceptions from ``run_pass`` propagate out of
    :meth:`run_forever`, so the supervisor logs, counts and restarts it.
    """

    def __init__(
        self,
        name: str,
        interval: float,
        run_pass: Callable[[], Awaitable[T]],
        *,
        jitter: float = 0.1,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.name = name
        self.interval = interval
        self._run_pass = run_pass
        self._jitter = jitter
        self._sleep = sleep
        self._rng = rng
        self._lock = asyncio.Lock()
        self.passes = 0

    def next_delay(self) -> float:
        return self.interval * (1 + self._jitter * (2 * self._rng() - 1))

    @property
    def running(self) -> bool:
        return self._lock.locked()

    async def trigger(self, run_pass: Callable[[], Awaitable[T]] | None = None) -> T:
        """Run one pass now (``run_pass`` instead of the scheduled one, if given)."""
        async with self._lock:
            self.passes += 1
            return await (run_pass or self._run_pass)()

    async def run_forever(self) -> None:
        while True:
            await self.trigger()
            await self._sleep(self.next_delay())
