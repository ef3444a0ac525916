"""The supervisor restarts crashed workers, counts restarts and stops everything."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from cryptorun_daemon.metrics import Metrics
from cryptorun_daemon.runtime.supervisor import Supervisor


def restarts(metrics: Metrics, task: str) -> float:
    value = metrics.registry.get_sample_value("cryptorun_task_restarts_total", {"task": task})
    return value or 0.0


async def test_crashing_worker_is_restarted_and_counted() -> None:
    """A worker that raises twice runs a third time; both crashes are counted."""
    metrics = Metrics(CollectorRegistry())
    supervisor = Supervisor(metrics, base_backoff=0.001, max_backoff=0.01)
    runs = 0
    done = asyncio.Event()

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs < 3:
            raise RuntimeError(f"boom {runs}")
        done.set()
        await asyncio.Event().wait()

    supervisor.spawn("flaky", flaky)
    await asyncio.wait_for(done.wait(), 5)
    assert runs == 3
    assert restarts(metrics, "flaky") == 2
    assert supervisor.workers()["flaky"] == {
        "running": True,
        "restarts": 2,
        "last_error": "RuntimeError: boom 2",
    }
    assert await supervisor.stop(timeout=1) == []


async def test_worker_without_restart_stays_down() -> None:
    """restart=False: one crash ends the worker, nothing is counted as a restart."""
    metrics = Metrics(CollectorRegistry())
    supervisor = Supervisor(metrics, base_backoff=0.001)

    async def once() -> None:
        raise ValueError("no")

    supervisor.spawn("once", once, restart=False)
    for _ in range(100):
        if not supervisor.workers()["once"]["running"]:
            break
        await asyncio.sleep(0.01)
    assert supervisor.workers()["once"]["running"] is False
    assert supervisor.workers()["once"]["last_error"] == "ValueError: no"
    assert restarts(metrics, "once") == 0


async def test_stop_cancels_workers_and_reports_stuck_ones() -> None:
    """stop() cancels every worker; one ignoring cancellation is reported, not awaited forever."""
    supervisor = Supervisor(Metrics(CollectorRegistry()))
    release = asyncio.Event()

    async def polite() -> None:
        await asyncio.Event().wait()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                continue  # deliberately ignores cancellation

    supervisor.spawn("polite", polite)
    supervisor.spawn("stubborn", stubborn)
    await asyncio.sleep(0)
    stuck = await supervisor.stop(timeout=0.2)
    assert stuck == ["stubborn"]
    assert supervisor.workers()["polite"]["running"] is False
    release.set()
    await asyncio.sleep(0.01)


async def test_duplicate_worker_names_are_refused() -> None:
    """Worker names are unique so status and restart counts are unambiguous."""
    supervisor = Supervisor(Metrics(CollectorRegistry()))

    async def idle() -> None:
        await asyncio.Event().wait()

    supervisor.spawn("w", idle)
    with pytest.raises(ValueError, match="already supervised"):
        supervisor.spawn("w", idle)
    await supervisor.stop(timeout=1)


async def test_cancel_stops_one_worker_by_name_and_frees_the_name() -> None:
    """cancel(name) ends that worker only, counts no restart, and the name can be spawned
    again; cancelling an unknown name answers False."""
    metrics = Metrics(CollectorRegistry())
    supervisor = Supervisor(metrics)
    cancelled = asyncio.Event()
    started = asyncio.Event()

    async def link() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def other() -> None:
        await asyncio.Event().wait()

    supervisor.spawn("link", link)
    supervisor.spawn("other", other)
    await started.wait()
    assert await supervisor.cancel("link") is True
    assert cancelled.is_set()
    assert "link" not in supervisor.workers()
    assert supervisor.workers()["other"]["running"] is True
    assert restarts(metrics, "link") == 0
    assert await supervisor.cancel("link") is False
    started.clear()
    supervisor.spawn("link", link)
    await started.wait()
    assert supervisor.workers()["link"]["running"] is True
    assert await supervisor.stop(timeout=1) == []
