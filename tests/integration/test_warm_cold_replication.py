"""Warm replication between two real daemon processes over loopback HTTP.

Region A (eu-central) holds sealed hourly partitions; region B (us-east)
pulls them. Faults are injected from outside: SIGKILL of the pulling
process, a TCP proxy that stalls mid-file, a byte flipped on A's disk.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from cryptorun_daemon.storage.layout import parse_partition_path
from cryptorun_daemon.storage.seal import seal_partition
from tests.harness.admin import TOKEN, auth_headers, scrape_metric, sync_now
from tests.harness.daemons import (
    RegionSpec,
    run_daemon_process,
    start_daemon_process,
    two_regions,
    wait_until_ready,
)
from tests.harness.net import FaultProxy
from tests.harness.testdata import seed_partitions, write_trade_partition
from tests.harness.wait import eventually

pytestmark = pytest.mark.slow

T0 = datetime(2025, 9, 1, tzinfo=UTC)
A, B = "eu-central", "us-east"
LINK = {"tier": "warm", "from": A, "to": B}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """One client session per test for reading metrics and calling the admin API."""
    async with aiohttp.ClientSession() as session:
        yield session


def _regions(tmp: Path) -> tuple[RegionSpec, RegionSpec]:
    # A 2 s SLO gives a pass every 0.5 s, so tests wait on state, not on timers.
    a, b = two_regions(tmp, rules=[{"tier": "warm", "from": A, "to": [B], "lag_slo": "2s"}])
    for spec in (a, b):
        spec.sections["replication"] = {"retry_attempts": 2, "request_timeout": "60s"}
    return a, b


def _tree(root: Path) -> dict[str, bytes]:
    """Every visible file and manifest of the warm tier (partials and temps excluded)."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted((root / "warm").rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    }


async def _require_component(base_url: str) -> None:
    async with (
        aiohttp.ClientSession(headers=auth_headers()) as session,
        session.get(f"{base_url}/v1/partitions", params={"tier": "warm"}) as resp,
    ):
        if resp.status == 404:
            pytest.fail("WarmColdComponent is not wired into cryptorun_daemon/components.py")


async def test_24_partitions_replicate_identically_and_rerun_moves_nothing(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """A's 24 sealed hours land in B byte-identical (manifests too), lag falls to 0,
    a re-run transfers 0 bytes, and hostile paths against A's server are all 4xx."""
    a, b = _regions(tmp_path)
    a.write()
    b.write()
    seed_partitions(a.storage_root, start=T0, count=24, rows=5_000)
    async with run_daemon_process(a.write()) as da, run_daemon_process(b.write()) as db:
        await _require_component(da.base_url)

        async def in_sync() -> bool:
            lag = await scrape_metric(
                http,
                db.base_url,
                "cryptorun_replication_lag_seconds",
                {"tier": "warm", "region": B, "source": A},
            )
            pending = await scrape_metric(
                http,
                db.base_url,
                "cryptorun_replication_pending_partitions",
                {"tier": "warm", "region": B, "source": A},
            )
            return lag == 0 and pending == 0 and len(_tree(b.storage_root)) == 24 * 3

        await eventually(in_sync, "B to hold all 24 partitions", timeout=60)
        assert _tree(b.storage_root) == _tree(a.storage_root)
        before = await scrape_metric(http, db.base_url, "cryptorun_replication_bytes_total", LINK)
        total = sum(len(v) for k, v in _tree(a.storage_root).items() if k.endswith(".parquet"))
        assert before == total

        report = await sync_now(http, db.base_url, "warm", A)
        assert report["bytes"] == 0
        assert report["steps"] == 0
        assert (
            await scrape_metric(http, db.base_url, "cryptorun_replication_bytes_total", LINK)
            == before
        )

        async with aiohttp.ClientSession() as session:
            async with session.get(f"{db.base_url}/v1/status", params={"tier": "warm"}) as resp:
                source = (await resp.json())["tiers"]["warm"]["sources"][A]
            assert source["lag_seconds"] == 0
            assert source["last_success"] is not None
            hour0 = "trade/venue=kraken/symbol=BTC-USD/date=2025-09-01/hour=00"
            async with session.get(
                f"{da.base_url}/v1/partitions/warm/{hour0}/part-0000.parquet"
            ) as resp:
                assert resp.status == 401
            (a.directory / "outside.txt").write_text("secret")
            for raw in (
                "/v1/partitions/warm/../../../outside.txt",
                "/v1/partitions/warm/..%2F..%2F..%2Foutside.txt",
                f"/v1/partitions/warm/{hour0}/..%2F..%2F..%2F..%2F..%2F..%2F..%2Foutside.txt",
                f"/v1/partitions/warm/{hour0}/%2e%2e/%2e%2e/x",
                "/v1/partitions/warm/%2Fetc%2Fpasswd",
                f"/v1/partitions/warm/{hour0}/_manifest.json/../../../../../../../outside.txt",
                f"/v1/partitions/warm/{hour0}/.part-0000.parquet.partial",
            ):
                url = URL(da.base_url + raw, encoded=True)
                async with session.get(url, headers=auth_headers()) as resp:
                    body = await resp.read()
                assert 400 <= resp.status < 500, raw
                assert b"secret" not in body


async def test_sigkill_mid_file_resumes_from_the_partial(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """B is SIGKILLed while a large file is half-pulled; restarted, it requests only
    the missing bytes (transferred < file size) and ends byte-identical to A."""
    a, b = _regions(tmp_path)
    key = parse_partition_path("warm", "trade/venue=kraken/symbol=BTC-USD/date=2025-09-01/hour=00")
    directory = write_trade_partition(a.storage_root, key, rows=400_000, compression="none")
    seal_partition(directory, writer_region=A, epoch=1)
    size = (directory / "part-0000.parquet").stat().st_size
    partial = b.storage_root / "warm" / key.relpath / ".part-0000.parquet.partial"
    async with (
        run_daemon_process(a.write()) as da,
        FaultProxy(a.port, stall_after=size // 2) as proxy,
    ):
        await _require_component(da.base_url)
        b.peers = {A: proxy.port}
        config_b = b.write()
        proc = start_daemon_process(config_b)
        try:
            await wait_until_ready(b.base_url, proc=proc)
            last = -1

            async def stalled() -> bool:
                nonlocal last
                current = partial.stat().st_size if partial.exists() else 0
                settled = current > 0 and current == last
                last = current
                await asyncio.sleep(0.2)
                return settled

            await eventually(stalled, "B to stall mid-file", timeout=60)
        finally:
            proc.kill()  # SIGKILL: no shutdown hooks, the partial stays as it was
            proc.wait()
        kept = partial.stat().st_size
        assert 0 < kept < size
        b.peers = {A: a.port}
        async with run_daemon_process(b.write()) as db:
            final = b.storage_root / "warm" / key.relpath / "_SUCCESS"

            async def committed() -> bool:
                return final.exists()

            await eventually(committed, "B to commit after restart", timeout=60)
            pulled = await scrape_metric(
                http, db.base_url, "cryptorun_replication_bytes_total", LINK
            )
        assert pulled == size - kept
        assert pulled is not None
        assert pulled < size
        assert _tree(b.storage_root) == _tree(a.storage_root)
        assert not partial.exists()


async def test_byte_flipped_at_source_fails_corrupt_and_commits_nothing(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """A file changed on A after sealing fails B's hash check: a `corrupt` failure is
    counted, the partition is not committed, the bad copy is quarantined; the
    healthy partitions still replicate."""
    a, b = _regions(tmp_path)
    dirs = seed_partitions(a.storage_root, start=T0, count=3, rows=5_000)
    victim_dir = dirs[1]
    victim = victim_dir / "part-0000.parquet"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    relpath = victim_dir.relative_to(a.storage_root / "warm")
    async with run_daemon_process(a.write()) as da, run_daemon_process(b.write()) as db:
        await _require_component(da.base_url)

        async def failed_corrupt() -> bool:
            value = await scrape_metric(
                http,
                db.base_url,
                "cryptorun_replication_step_failures_total",
                {**LINK, "reason": "corrupt"},
            )
            return bool(value)

        await eventually(failed_corrupt, "a corrupt step failure", timeout=60)
        report = await sync_now(http, db.base_url, "warm", A)
        assert report["ok"] is False
        assert report["partitions_committed"] == 0
        assert report["pending_partitions"] == 1
        assert {f["reason"] for f in report["failures"]} == {"corrupt"}
        assert await scrape_metric(
            http, db.base_url, "cryptorun_data_consistency_errors_total", {"check": "corrupt"}
        )
    dest = b.storage_root / "warm" / relpath
    assert not (dest / "_SUCCESS").exists()
    assert not (dest / "part-0000.parquet").exists()
    for good in (dirs[0], dirs[2]):
        assert (
            b.storage_root / "warm" / good.relative_to(a.storage_root / "warm") / "_SUCCESS"
        ).exists()
    quarantined = list((b.storage_root / "_quarantine" / "warm" / B).rglob("*.partial"))
    assert quarantined


async def test_simulate_reports_the_plan_and_transfers_nothing(tmp_path: Path) -> None:
    """POST /v1/replication/simulate returns steps for the window and copies no byte."""
    a, b = _regions(tmp_path)
    b.rules = []  # B pulls nothing on its own: only the simulation runs
    a.rules = []
    seed_partitions(a.storage_root, start=T0, count=8, rows=1_000)
    async with run_daemon_process(a.write()) as da, run_daemon_process(b.write()) as db:
        await _require_component(da.base_url)
        async with aiohttp.ClientSession(headers=auth_headers(TOKEN)) as session:
            async with session.post(
                f"{db.base_url}/v1/replication/simulate",
                json={
                    "from": A,
                    "to": B,
                    "tier": "warm",
                    "strict": False,
                    "window": "2025-09-01T00:00:00Z/2025-09-01T06:00:00Z",
                },
            ) as resp:
                assert resp.status == 200
                plan = await resp.json()
        assert plan["dry_run"] is True
        assert plan["summary"]["partitions"] == 6
        assert plan["steps"][0]["window"] == ("2025-09-01T00:00:00Z/2025-09-01T01:00:00Z")
    with contextlib.suppress(FileNotFoundError):
        assert _tree(b.storage_root) == {}
