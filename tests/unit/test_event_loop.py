"""The event-loop choice: uvloop by default, asyncio when forced or when uvloop is missing."""

from __future__ import annotations

import asyncio

import pytest

from cryptorun_daemon.errors import ConfigError
from cryptorun_daemon.runtime import event_loop


def test_uvloop_is_the_default_when_installed() -> None:
    """With no override the daemon runs on uvloop (installed with the package)."""
    choice = event_loop.choose_loop({})
    assert (choice.name, choice.reason) == ("uvloop", "default")
    assert event_loop.run(_loop_name(), choice) == "uvloop"


def test_the_environment_forces_the_asyncio_fallback() -> None:
    """CRYPTORUN_EVENT_LOOP=asyncio runs the standard loop, the same path as a missing uvloop."""
    choice = event_loop.choose_loop({event_loop.ENV_VAR: "asyncio"})
    assert choice.name == "asyncio"
    assert choice.factory is None
    assert event_loop.run(_loop_name(), choice) == "asyncio"


def test_a_missing_uvloop_falls_back_to_asyncio_unless_insisted_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When uvloop cannot be imported, auto falls back (saying why) and uvloop is an error."""
    import sys

    monkeypatch.setitem(sys.modules, "uvloop", None)  # makes `import uvloop` raise ImportError
    choice = event_loop.choose_loop({})
    assert choice.name == "asyncio"
    assert "uvloop not available" in choice.reason
    with pytest.raises(ConfigError, match="CRYPTORUN_EVENT_LOOP"):
        event_loop.choose_loop({event_loop.ENV_VAR: "uvloop"})


def test_an_unknown_choice_is_a_config_error() -> None:
    """A typo in the override is refused at start instead of silently picking a loop."""
    with pytest.raises(ConfigError, match="expected one of"):
        event_loop.choose_loop({event_loop.ENV_VAR: "trio"})


async def _loop_name() -> str:
    await asyncio.sleep(0)
    return event_loop.running_loop_name()


def test_the_daemon_loop_runs_with_the_tuned_collector_thresholds() -> None:
    """run() sets GC_THRESHOLDS before the daemon's coroutine starts (the default
    thresholds made the collector a large share of the hot path's CPU)."""
    import gc

    from cryptorun_daemon.runtime import event_loop

    before = gc.get_threshold()

    async def thresholds() -> tuple[int, int, int]:
        return gc.get_threshold()

    try:
        gc.set_threshold(700, 10, 10)
        assert event_loop.run(thresholds()) == event_loop.GC_THRESHOLDS
    finally:
        gc.set_threshold(*before)
