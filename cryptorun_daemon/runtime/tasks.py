"""Running sibling coroutines so that none outlives a failed sibling."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from typing import TypeVar

_T = TypeVar("_T")

__all__ = ["gather_or_cancel"]


async def gather_or_cancel(calls: Iterable[Awaitable[_T]]) -> list[_T]:
    """Run ``calls`` together and return their results in order.

    Unlike a bare ``asyncio.gather``, the first failure (or a cancellation of
    this call) cancels the others and waits for them to end before it
    propagates: no sibling keeps writing a file or sending a request the
    caller has already given up on (and might start again). The error raised
    is the first failure itself, not an ``ExceptionGroup`` (callers judge it
    by type and reason).
    """
    tasks: list[asyncio.Future[_T]] = []
    try:
        for call in calls:  # inside: a generator failing halfway still gets its tasks stopped
            tasks.append(asyncio.ensure_future(call))
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
