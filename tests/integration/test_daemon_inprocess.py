"""Daemons in one process: separate registries, supervised components, readiness."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from cryptorun_daemon.config import Config, load_config
from cryptorun_daemon.daemon import Daemon
from cryptorun_daemon.runtime.component import DaemonContext, ReloadResult
from tests.harness.daemons import run_daemon, two_regions


class CrashingComponent:
    """A component whose worker fails on its first two runs (a real supervised worker)."""

    name = "crashy"

    def __init__(self) -> None:
        self.runs = 0
        self.ctx: DaemonContext | None = None
        self.healthy = asyncio.Event()
        self.ready = False

    def __call__(self, ctx: DaemonContext) -> CrashingComponent:
        """Act as the component factory the daemon calls with its context."""
        self.ctx = ctx
        return self

    def routes(self) -> Sequence[web.RouteDef]:
        async def hello(_: web.Request) -> web.Response:
            return web.json_response({"runs": self.runs})

        return [web.get("/v1/test/hello", hello)]

    async def start(self) -> None:
        assert self.ctx is not None
        self.ctx.supervisor.spawn("crashy-worker", self._work)

    async def _work(self) -> None:
        self.runs += 1
        if self.runs <= 2:
            raise RuntimeError(f"crash number {self.runs}")
        self.healthy.set()
        await asyncio.Event().wait()

    async def stop(self) -> None:
        return None

    def reload(self, new_config: Config) -> ReloadResult:
        return ReloadResult()

    def status(self, *, tier: str | None, region: str | None) -> dict[str, Any]:
        return {"tiers": {"warm": {"crashy_runs": self.runs}}}

    def not_ready_reasons(self) -> list[str]:
        return [] if self.ready else ["crashy is warming up"]


async def test_two_daemons_in_one_process_keep_separate_metrics(tmp_path: Path) -> None:
    """Each daemon has its own registry: a counter bumped in one is 0 in the other."""
    a_spec, b_spec = two_regions(tmp_path)
    async with run_daemon(a_spec.write()) as a, run_daemon(b_spec.write()):
        a.metrics.hot_records_total.labels(region="eu-central", origin="eu-central").inc(5)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{a_spec.base_url}/metrics") as resp:
                a_text = await resp.text()
            async with http.get(f"{b_spec.base_url}/metrics") as resp:
                b_text = await resp.text()
    assert 'cryptorun_hot_records_total{origin="eu-central",region="eu-central"} 5.0' in a_text
    assert 'cryptorun_hot_records_total{origin="eu-central",region="us-east"} 0.0' in b_text
    assert 'eu-central",region="eu-central"' not in b_text


async def test_metrics_are_rendered_off_the_event_loop(tmp_path: Path) -> None:
    """``/metrics`` renders the registry in a worker thread, not on the loop that renews
    the lease (a render takes up to 200 ms on a loaded host, found by the chaos soak)."""
    spec, _ = two_regions(tmp_path)
    async with run_daemon(spec.write()) as daemon:
        threads: list[int] = []
        render = daemon.metrics.exposition

        def recording() -> bytes:
            threads.append(threading.get_ident())
            return render()

        daemon.metrics.exposition = recording  # type: ignore[method-assign]
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{spec.base_url}/metrics") as resp:
                assert resp.status == 200
                assert "cryptorun_hot_records_total" in await resp.text()
    assert threads
    assert threading.get_ident() not in threads


async def test_crashing_worker_restarts_and_daemon_stays_up(tmp_path: Path) -> None:
    """A component worker that raises is restarted with backoff, counted, and shown in status."""
    spec, _ = two_regions(tmp_path)
    config = load_config(spec.write())
    crashy = CrashingComponent()
    async with run_daemon(config, extra_components=[crashy]):
        await asyncio.wait_for(crashy.healthy.wait(), 20)
        crashy.ready = True
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{spec.base_url}/metrics") as resp:
                text = await resp.text()
            async with http.get(f"{spec.base_url}/v1/status") as resp:
                status = await resp.json()
            async with http.get(f"{spec.base_url}/healthz") as resp:
                assert resp.status == 200
    assert 'cryptorun_task_restarts_total{task="crashy-worker"} 2.0' in text
    assert status["workers"]["crashy-worker"]["restarts"] == 2
    assert status["workers"]["crashy-worker"]["running"] is True
    assert status["tiers"]["warm"]["crashy_runs"] == 3
    assert status["tiers"]["warm"]["rules"][0]["from"] == "eu-central"


async def test_readyz_reports_component_reasons_until_ready(tmp_path: Path) -> None:
    """/readyz is 503 with every component's reason, then 200 once they clear."""
    spec, _ = two_regions(tmp_path)
    crashy = CrashingComponent()
    crashy.runs = 10  # healthy from the first run
    async with (
        run_daemon(load_config(spec.write()), extra_components=[crashy]),
        aiohttp.ClientSession() as http,
    ):
        async with http.get(f"{spec.base_url}/readyz") as resp:
            assert resp.status == 503
            assert await resp.json() == {"status": "not_ready", "reasons": ["crashy is warming up"]}
        crashy.ready = True
        async with http.get(f"{spec.base_url}/readyz") as resp:
            assert resp.status == 200
        async with http.get(f"{spec.base_url}/v1/test/hello") as resp:
            assert resp.status == 401  # component routes are protected by default


class StopProbe:
    """A component whose stop() is recorded and, if asked, never returns.

    ``hang="cancellable"`` waits forever but unwinds when cancelled;
    ``hang="stubborn"`` also swallows the cancellation and keeps waiting until
    :attr:`release` is set (a badly written component).
    """

    def __init__(self, name: str, hang: str | None = None) -> None:
        self.name = name
        self.hang = hang
        self.stop_called = False
        self.cancelled = False
        self.release = asyncio.Event()

    def __call__(self, ctx: DaemonContext) -> StopProbe:
        return self

    def routes(self) -> Sequence[web.RouteDef]:
        return []

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        self.stop_called = True
        if self.hang is None:
            return
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            if self.hang == "cancellable":
                raise
        await self.release.wait()

    def reload(self, new_config: Config) -> ReloadResult:
        return ReloadResult()

    def status(self, *, tier: str | None, region: str | None) -> dict[str, Any]:
        return {}

    def not_ready_reasons(self) -> list[str]:
        return []


SHUTDOWN_BUDGET = 2.0
# Only a guard against a hung test: nothing below asserts how long shutdown took.
HANG_GUARD = SHUTDOWN_BUDGET + 30


async def _port_is_closed(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return True
    writer.close()
    return False


async def test_components_hanging_in_stop_are_cut_off_and_later_phases_still_run(
    tmp_path: Path,
) -> None:
    """Two components whose stop() never returns are each cancelled at their share of the one
    shutdown deadline and logged as the phase that overran; the first does not eat the
    second's share (both get a share, together within the budget), the component stopped
    after them still has stop() called, and the supervisor, admin server and client session
    are still closed."""
    spec, _ = two_regions(tmp_path)
    spec.sections["admin"] = {"shutdown_timeout": f"{SHUTDOWN_BUDGET}s"}
    after = StopProbe("after-the-hangs")
    first, second = StopProbe("hanging-1", "cancellable"), StopProbe("hanging-2", "cancellable")
    # Stopped in reverse: hanging-1, hanging-2, after-the-hangs, then the built-in components.
    daemon = Daemon(
        load_config(spec.write()),
        registry=CollectorRegistry(),
        extra_components=[after, second, first],
    )
    await daemon.startup()
    assert daemon.ctx.http is not None
    with capture_logs() as logs:
        await asyncio.wait_for(daemon.shutdown(), HANG_GUARD)
    assert (first.cancelled, second.cancelled) == (True, True)
    assert after.stop_called
    # Both hanging components overran (under load a slow real component may join them).
    assert {"stop hanging-1", "stop hanging-2"} <= set(daemon.shutdown_overruns)
    overruns = [e for e in logs if e["event"] == "shutdown phase overran"]
    assert [e["phase"] for e in overruns] == ["stop hanging-1", "stop hanging-2"]
    shares = [e["timeout_seconds"] for e in overruns]
    assert all(share > 0 for share in shares), shares
    assert sum(shares) <= SHUTDOWN_BUDGET, shares
    assert not any(w["running"] for w in daemon.supervisor.workers().values())
    assert daemon.ctx.http.closed
    assert await _port_is_closed(spec.port)


async def test_a_component_ignoring_cancellation_cannot_hold_shutdown_past_the_deadline(
    tmp_path: Path,
) -> None:
    """A component that swallows the cancellation of its stop() is abandoned (logged, kept
    referenced) instead of holding the daemon: shutdown returns, every later component and
    phase still runs."""
    spec, _ = two_regions(tmp_path)
    spec.sections["admin"] = {"shutdown_timeout": f"{SHUTDOWN_BUDGET}s"}
    after = StopProbe("after-the-hang")
    stubborn = StopProbe("stubborn", hang="stubborn")
    daemon = Daemon(
        load_config(spec.write()), registry=CollectorRegistry(), extra_components=[after, stubborn]
    )
    await daemon.startup()
    assert daemon.ctx.http is not None
    try:
        with capture_logs() as logs:
            await asyncio.wait_for(daemon.shutdown(), HANG_GUARD)
        assert stubborn.cancelled
        assert after.stop_called
        # Under load another phase may overrun its share too; the stubborn one always does.
        assert "stop stubborn" in daemon.shutdown_overruns
        assert any(
            e["event"] == "shutdown step ignored its cancellation; abandoned"
            and e["phase"] == "stop stubborn"
            for e in logs
        )
        assert daemon.ctx.http.closed
        assert await _port_is_closed(spec.port)
    finally:
        stubborn.release.set()  # let the abandoned step end before the loop closes
        await asyncio.sleep(0)


class StubbornWorker(StopProbe):
    """A component that stops at once but leaves a worker that swallows its cancellation."""

    def __call__(self, ctx: DaemonContext) -> StubbornWorker:
        self.ctx = ctx
        return self

    async def start(self) -> None:
        self.ctx.supervisor.spawn("stubborn-worker", self._work)

    async def _work(self) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
        await self.release.wait()


async def test_a_worker_ignoring_cancellation_is_abandoned_at_its_mark(tmp_path: Path) -> None:
    """A supervised worker that ignores the shutdown's cancellation is abandoned when the
    workers phase reaches its mark, logged as that phase overrunning; the admin server and
    client session are still closed."""
    spec, _ = two_regions(tmp_path)
    spec.sections["admin"] = {"shutdown_timeout": f"{SHUTDOWN_BUDGET}s"}
    stubborn = StubbornWorker("stubborn-owner")
    daemon = Daemon(
        load_config(spec.write()), registry=CollectorRegistry(), extra_components=[stubborn]
    )
    await daemon.startup()
    assert daemon.ctx.http is not None
    try:
        with capture_logs() as logs:
            await asyncio.wait_for(daemon.shutdown(), HANG_GUARD)
        assert stubborn.cancelled
        assert "workers" in daemon.shutdown_overruns
        overruns = [e for e in logs if e["event"] == "shutdown phase overran"]
        assert [(e["phase"], e["workers"]) for e in overruns] == [("workers", ["stubborn-worker"])]
        assert daemon.ctx.http.closed
        assert await _port_is_closed(spec.port)
    finally:
        stubborn.release.set()  # let the abandoned worker end before the loop closes
        await asyncio.sleep(0)


@dataclass(frozen=True)
class ConfigWithNewSection(Config):
    """The config as it would be once someone adds a section and forgets reload."""

    experimental: str = "off"


async def test_a_changed_section_no_component_claims_is_reported_not_ignored(
    tmp_path: Path,
) -> None:
    """On reload a top-level config section that changed but that neither the daemon nor any
    component claims is reported as needing a restart, with a warning naming it; sections the
    components claim are still reported by them, and the running config keeps the old values."""
    spec, _ = two_regions(tmp_path)
    loaded = load_config(spec.write())
    config = ConfigWithNewSection(**{f.name: getattr(loaded, f.name) for f in fields(loaded)})
    async with run_daemon(config) as daemon:
        changed = replace(
            config,
            experimental="on",
            replication=replace(config.replication, max_concurrency=2),
        )
        with capture_logs() as logs:
            result = daemon.apply_config(changed)
        running = daemon.config
    assert result.applied == ()
    assert result.needs_restart == ("replication", "experimental")
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert any(e.get("sections") == ["experimental"] for e in warnings), warnings
    assert isinstance(running, ConfigWithNewSection)
    assert running.experimental == "off"
    assert running.replication == config.replication
