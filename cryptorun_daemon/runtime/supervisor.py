"""Owns every long-running task of the daemon and restarts the ones that crash.

Why not a bare ``TaskGroup``: a TaskGroup cancels all siblings when one child
fails, and the daemon must survive a worker crash. The supervisor keeps strong
references to every task, logs a crash with its traceback, counts it in
``cryptorun_task_restarts_total{task}`` and restarts the worker after a capped
exponential backoff. A worker that returns normally is finished, not restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from cryptorun_daemon.metrics import Metrics

WorkerFactory = Callable[[], Awaitable[None]]
log = structlog.get_logger("cryptorun.supervisor")


@dataclass
class WorkerState:
    name: str
    factory: WorkerFactory
    restart: bool
    task: asyncio.Task[None] | None = None
    restarts: int = 0
    last_error: str | None = None
    finished: bool = False
    backoff: list[float] = field(default_factory=list)


class Supervisor:
    """Starts, watches and stops the daemon's workers.

    Error handling: an exception escaping a worker is logged with traceback and
    counted; the worker is restarted after ``min(max_backoff, base * 2**n)``
    seconds with ±20 % jitter (``n`` = consecutive crashes). Cancellation is not
    a crash. Resource handling: :meth:`stop` cancels every worker and waits for
    them under a deadline, so no task outlives the supervisor.
    """

    def __init__(
        self,
        metrics: Metrics,
        *,
        base_backoff: float = 0.5,
        max_backoff: float = 30.0,
        healthy_after: float = 60.0,
    ) -> None:
        self._metrics = metrics
        self._base = base_backoff
        self._max = max_backoff
        self._healthy_after = healthy_after
        self._workers: dict[str, WorkerState] = {}
        self._stopping = False
        self._abandoned: set[asyncio.Task[None]] = set()
        self.ticks = 0

    def spawn(self, name: str, factory: WorkerFactory, *, restart: bool = True) -> None:
        """Run ``factory()`` as a supervised worker called ``name`` (unique)."""
        if name in self._workers:
            raise ValueError(f"worker {name!r} is already supervised")
        if self._stopping:
            raise RuntimeError("supervisor is stopping; no new workers")
        state = WorkerState(name=name, factory=factory, restart=restart)
        self._workers[name] = state
        state.task = asyncio.create_task(self._run(state), name=f"worker:{name}")

    async def _run(self, state: WorkerState) -> None:
        consecutive = 0
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await state.factory()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                state.last_error = f"{type(exc).__name__}: {exc}"
                if self._stopping or not state.restart:
                    log.error("worker failed", task=state.name, exc_info=True)
                    state.finished = True
                    return
                # A worker that ran a long time before crashing is not in a crash loop.
                consecutive = 1 if loop.time() - started > self._healthy_after else consecutive + 1
                delay = min(self._max, self._base * 2 ** (consecutive - 1))
                delay *= random.uniform(0.8, 1.2)
                state.restarts += 1
                self._metrics.task_restarts_total.labels(task=state.name).inc()
                log.error(
                    "worker crashed; restarting",
                    task=state.name,
                    restarts=state.restarts,
                    backoff_seconds=round(delay, 3),
                    exc_info=True,
                )
                await asyncio.sleep(delay)
                continue
            state.finished = True
            return

    async def cancel(self, name: str, *, timeout: float = 5.0) -> bool:
        """Stop the worker called ``name`` and forget it, so the name can be spawned again.

        Returns False when no such worker exists. Cancellation is not a crash:
        nothing is counted. Components use this to replace workers when their
        topology changes (replication links after a failover).

        Error handling: a worker that ignores cancellation for ``timeout``
        seconds is logged and abandoned (its task keeps its strong reference
        until it ends, so it is never garbage-collected mid-flight).
        """
        state = self._workers.pop(name, None)
        if state is None:
            return False
        task = state.task
        if task is None or task.done():
            return True
        task.cancel(f"worker {name} cancelled")
        _, pending = await asyncio.wait({task}, timeout=timeout)
        if pending:
            log.error("worker did not stop after cancel", task=name)
            self._abandoned.add(task)
            task.add_done_callback(self._abandoned.discard)
        else:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                task.result()
        return True

    def tick(self) -> None:
        """Called by the daemon's heartbeat loop; ``/healthz`` reads the tick count."""
        self.ticks += 1

    def workers(self) -> dict[str, dict[str, Any]]:
        """Per-worker state for ``/v1/status``."""
        return {
            name: {
                "running": state.task is not None and not state.task.done(),
                "restarts": state.restarts,
                "last_error": state.last_error,
            }
            for name, state in sorted(self._workers.items())
        }

    async def stop(self, timeout: float) -> list[str]:
        """Cancel every worker and wait up to ``timeout`` seconds.

        Returns the names of workers that did not finish in time (they are
        abandoned with a log line so shutdown cannot hang forever).
        """
        self._stopping = True
        tasks = {s.name: s.task for s in self._workers.values() if s.task and not s.task.done()}
        for task in tasks.values():
            task.cancel("daemon shutting down")
        if not tasks:
            return []
        _, pending = await asyncio.wait(tasks.values(), timeout=timeout)
        stuck = [name for name, task in tasks.items() if task in pending]
        for name in stuck:
            log.error("worker did not stop before the shutdown deadline", task=name)
        for task in tasks.values():
            if task.done():
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    task.result()
        return stuck
