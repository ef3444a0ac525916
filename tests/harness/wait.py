"""Wait for a condition by polling it, never by a fixed sleep.

Every test that waits for something to happen elsewhere (another process, a
background task, a real server) uses :func:`eventually`. The timeout is only
the point at which the test gives up and says what it was waiting for: it is
never a claim about speed (speed is measured in ``bench/``, not asserted), so
it is generous for a loaded two-core machine.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

DEFAULT_TIMEOUT = 30.0
DEFAULT_INTERVAL = 0.05


async def eventually(
    check: Callable[[], bool] | Callable[[], Awaitable[bool]],
    what: str = "",
    *,
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = DEFAULT_INTERVAL,
    detail: Callable[[], object] | None = None,
) -> None:
    """Return once ``check()`` (plain or async) is true; poll every ``interval`` seconds.

    After ``timeout`` seconds raise ``AssertionError`` naming ``what`` (or the
    check) and, when given, ``detail()`` — e.g. the last answer seen or a
    server's log tail — so a failure says where things stood.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            message = f"not within {timeout}s: {what or getattr(check, '__qualname__', check)}"
            if detail is not None:
                message += f"\n{detail()}"
            raise AssertionError(message)
        await asyncio.sleep(interval)
