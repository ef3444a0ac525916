"""gather_or_cancel: siblings never outlive a failed sibling."""

from __future__ import annotations

import asyncio

import pytest

from cryptorun_daemon.runtime.tasks import gather_or_cancel


async def test_results_come_back_in_order() -> None:
    async def after(delay: float, value: int) -> int:
        await asyncio.sleep(delay)
        return value

    assert await gather_or_cancel([after(0.02, 1), after(0.0, 2), after(0.01, 3)]) == [1, 2, 3]


async def test_a_failure_cancels_and_awaits_the_siblings_before_it_propagates() -> None:
    """The sibling is cancelled and has run its cleanup by the time the caller sees the
    error (a bare asyncio.gather leaves it running: it would still be mid-write)."""
    events: list[str] = []
    started = asyncio.Event()

    async def slow_writer() -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        finally:
            await asyncio.sleep(0)  # cleanup that itself awaits
            events.append("writer stopped")

    async def failing() -> None:
        await started.wait()
        raise ValueError("source gone")

    with pytest.raises(ValueError, match="source gone"):
        await gather_or_cancel([slow_writer(), failing()])
    assert events == ["writer stopped"]
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []


async def test_cancelling_the_caller_cancels_every_call() -> None:
    stopped: list[int] = []

    async def worker(n: int) -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            stopped.append(n)

    task = asyncio.ensure_future(gather_or_cancel([worker(1), worker(2)]))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sorted(stopped) == [1, 2]
