"""Which event loop the daemon runs on: uvloop by default, asyncio where it cannot be had.

uvloop (libuv, in C) runs the same asyncio code with cheaper sockets, timers
and callbacks — the hot mirror's per-frame cost is mostly loop overhead — so
it is the default, as in uvicorn. It is optional: on a platform without a
wheel (or when it fails to import) the daemon falls back to the standard
loop and says so in a log line and in ``/v1/status`` (``event_loop``).

``CRYPTORUN_EVENT_LOOP`` overrides the choice: ``asyncio`` forces the
standard loop (to rule the loop out when debugging, and to test the fallback
path), ``uvloop`` insists on uvloop (an error when it is missing), ``auto``
(or unset) is the default.

:func:`run` also sets the garbage collector's thresholds for a process that
allocates a few containers per record at 100,000 records/s while holding a
large live set (the replay buffer): see :func:`tune_gc`; and it makes glibc
unmap freed blocks of 1 MiB or more (:mod:`~cryptorun_daemon.runtime.allocator`).
"""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from cryptorun_daemon.errors import ConfigError, ConfigProblem
from cryptorun_daemon.runtime.allocator import return_large_blocks

ENV_VAR: Final = "CRYPTORUN_EVENT_LOOP"
# Collect the youngest generation every 100,000 net container allocations (the
# default, 700, is about one batch of records), the middle one every 20 of those
# and the whole heap every 20 of those: a full collection about every 40 million
# allocations, a minute or two at full rate, so reference cycles are still
# reclaimed while the replay buffer is no longer traversed several times a second.
GC_THRESHOLDS: Final = (100_000, 20, 20)
CHOICES: Final = ("auto", "uvloop", "asyncio")
T = TypeVar("T")


@dataclass(frozen=True)
class LoopChoice:
    """The loop to run and why (``reason`` goes into the start-up log line)."""

    name: str  # "uvloop" or "asyncio"
    reason: str
    factory: Callable[[], asyncio.AbstractEventLoop] | None  # None: asyncio's default


def choose_loop(environ: dict[str, str] | None = None) -> LoopChoice:
    """Pick the loop from ``CRYPTORUN_EVENT_LOOP`` and what is installed.

    Error handling: :class:`ConfigError` for an unknown value, and for
    ``uvloop`` when uvloop cannot be imported.
    """
    wanted = (environ if environ is not None else os.environ).get(ENV_VAR, "auto") or "auto"
    if wanted not in CHOICES:
        raise _env_error(f"{wanted!r}: expected one of {', '.join(CHOICES)}")
    if wanted == "asyncio":
        return LoopChoice("asyncio", f"{ENV_VAR}=asyncio", None)
    try:
        import uvloop
    except ImportError as exc:
        if wanted == "uvloop":
            raise _env_error(f"uvloop cannot be imported: {exc}") from None
        return LoopChoice("asyncio", f"uvloop not available ({exc})", None)
    return LoopChoice(
        "uvloop", "default" if wanted == "auto" else f"{ENV_VAR}=uvloop", uvloop.new_event_loop
    )


def _env_error(message: str) -> ConfigError:
    return ConfigError([ConfigProblem("environment", ENV_VAR, message)])


def tune_gc() -> None:
    """Set :data:`GC_THRESHOLDS` (process-wide, once, before the daemon starts).

    With the default thresholds, the cyclic collector ran so often under load
    that decoding a record line cost 2-3x its own time (py-spy and a
    micro-benchmark with a 200,000-record live set: docs/BENCHMARKS.md).
    """
    gc.set_threshold(*GC_THRESHOLDS)


def run(main: Coroutine[Any, Any, T], choice: LoopChoice | None = None) -> T:
    """Run ``main`` to completion on a fresh loop of the chosen kind (like ``asyncio.run``),
    with the collector tuned by :func:`tune_gc` and large freed blocks handed back to the
    kernel (:func:`~cryptorun_daemon.runtime.allocator.return_large_blocks`)."""
    choice = choice or choose_loop()
    tune_gc()
    return_large_blocks()
    with asyncio.Runner(loop_factory=choice.factory) as runner:
        return runner.run(main)


def running_loop_name() -> str:
    """``uvloop`` or ``asyncio``: the kind of loop this coroutine runs on (for status)."""
    loop = asyncio.get_running_loop()
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
