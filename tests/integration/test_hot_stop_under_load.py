"""A real daemon process ingesting at a high synthetic rate stops cleanly on SIGTERM,
on uvloop (the default) and on the asyncio fallback."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.harness.daemons import (
    sample_value,
    start_daemon_process,
    two_regions,
    wait_until_ready,
)

# Far above admin.shutdown_timeout (10 s): only a hung process gets near it.
HANG_GUARD = 90.0
RATE = 200_000.0  # more than two cores ingest: the feed runs flat out, the worst case for a stop


async def _hot_status(http: aiohttp.ClientSession, base_url: str) -> dict[str, Any]:
    async with http.get(f"{base_url}/v1/status?tier=hot") as resp:
        doc: dict[str, Any] = await resp.json()
    return doc


@pytest.mark.slow
@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
async def test_sigterm_at_a_high_ingest_rate_exits_zero_on_either_loop(
    tmp_path: Path, loop: str
) -> None:
    """With the synthetic feed asked for more than the box can ingest, SIGTERM still ends
    the process with exit code 0 (before the test's generous hang guard); the loop the
    daemon ran on is the one chosen, shown in /v1/status and in its start-up log line; the
    feed's ingest lag is published in status and as cryptorun_hot_ingest_lag_seconds."""
    region, _ = two_regions(tmp_path)
    region.feeds = [
        {
            "kind": "synthetic",
            "name": "syn",
            "venue": "synthetic",
            "rate": RATE,
            "symbols": ["BTC/USD", "ETH/USD"],
            "book_depth": 5,
        }
    ]
    config = region.write()
    log_path = config.parent / f"{config.stem}.log"
    proc = start_daemon_process(config, env={"CRYPTORUN_EVENT_LOOP": loop})
    try:
        await wait_until_ready(region.base_url, proc=proc, log_path=log_path)
        async with aiohttp.ClientSession() as http:
            status = await _hot_status(http, region.base_url)
            assert status["event_loop"] == loop
            # Stop only once the feed is running flat out (well past its first bursts).
            for _ in range(600):
                stream = (await _hot_status(http, region.base_url))["tiers"]["hot"]["stream"]
                if stream["origins"][region.region]["head_seq"] >= 50_000:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the synthetic feed never reached 50,000 records")
            # Backpressure is visible: the feed's ingest lag, in status and as a gauge.
            ingest = stream["feeds"]["syn"]["ingest"]
            assert ingest["records"] > 0
            assert ingest["batches"] > 0
            assert {"lag_seconds", "max_lag_seconds", "behind"} <= set(ingest)
            async with http.get(f"{region.base_url}/metrics") as resp:
                exposition = await resp.text()
            labels = {"region": region.region, "feed": "syn"}
            assert sample_value(exposition, "cryptorun_hot_ingest_lag_seconds", labels) is not None
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, HANG_GUARD)
    finally:
        if proc.poll() is None:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
    log = log_path.read_text(errors="replace")
    assert code == 0, log[-3000:]
    assert "event loop" in log
    assert f"loop={loop}" in log or f'"loop": "{loop}"' in log
    assert "daemon stopped" in log
