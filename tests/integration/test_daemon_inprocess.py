"""Daemons in one process: separate registries, supervised components, readiness."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from cryptorun_daemon.config import load_config
from cryptorun_daemon.runtime.component import DaemonContext
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
