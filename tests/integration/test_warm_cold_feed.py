"""Warm replication by change feed and anti-entropy, between real daemon processes.

Region A (eu-central) is the warm primary; replicas pull over loopback HTTP.
Partitions are sealed through A's API (``POST /v1/partitions/seal``), so every
seal goes through A's change feed the way production seals do. Faults come
from outside: processes stopped and restarted, a feed retention of two
entries, a file deleted by hand, the primary killed and another region
promoted through the CLI.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cryptorun_daemon.storage.layout import PartitionKey, hourly_key
from tests.harness.cli import operator_cli
from tests.harness.daemons import (
    RegionSpec,
    auth_headers,
    free_port,
    scrape_metric,
    start_daemon_process,
    stop_process,
    wait_until_ready,
)
from tests.harness.testdata import seed_partitions, write_trade_partition

pytestmark = pytest.mark.slow

T0 = datetime(2025, 9, 1, tzinfo=UTC)
A, B, C = "eu-central", "us-east", "ap-south"


def _regions(tmp: Path, names: tuple[str, ...] = (A, B)) -> list[RegionSpec]:
    """Regions peered with each other; warm from A to the others, a pass every 0.5 s."""
    ports = {name: free_port() for name in names}
    rules = [{"tier": "warm", "from": A, "to": [n for n in names if n != A], "lag_slo": "2s"}]
    specs = []
    for name in names:
        spec = RegionSpec(
            name,
            ports[name],
            tmp / name,
            peers={n: p for n, p in ports.items() if n != name},
            rules=rules,
        )
        spec.sections["replication"] = {
            "retry_attempts": 2,
            "request_timeout": "30s",
            "peer_down_after": "2s",
        }
        specs.append(spec)
    return specs


def _key(hour: int) -> PartitionKey:
    return hourly_key("warm", "trade", "kraken", "BTC-USD", T0 + timedelta(hours=hour))


def _tree(root: Path) -> dict[str, bytes]:
    """Every visible file of the warm tier (partials, temps and ``_`` folders excluded)."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted((root / "warm").rglob("*"))
        if p.is_file()
        and not p.name.startswith(".")
        and not any(part.startswith("_") for part in p.relative_to(root / "warm").parts[:1])
    }


def _sealed_count(root: Path) -> int:
    return sum(1 for _ in (root / "warm").rglob("_SUCCESS"))


class Region:
    """One region's daemon process, restartable."""

    def __init__(self, spec: RegionSpec) -> None:
        self.spec = spec
        self.config = spec.write()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return self.spec.base_url

    @property
    def root(self) -> Path:
        return self.spec.storage_root

    async def start(self) -> None:
        self.proc = start_daemon_process(self.config)
        await wait_until_ready(
            self.url, proc=self.proc, log_path=self.config.parent / f"{self.config.stem}.log"
        )

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.proc = None


async def _seal(region: Region, hour: int, *, seed: int | None = None) -> None:
    """Write one warm hour at ``region`` and seal it through its API (so through its feed).

    A region that has just started refuses seals (503) until it has compared
    roles with its peers; the seal is retried until it is accepted.
    """
    key = _key(hour)
    write_trade_partition(
        region.root, key, rows=500, origin=region.spec.region, seed=seed or hour + 1
    )

    async def sealed() -> bool:
        async with (
            aiohttp.ClientSession(headers=auth_headers()) as http,
            http.post(
                f"{region.url}/v1/partitions/seal", json={"tier": "warm", "partition": key.relpath}
            ) as resp,
        ):
            if resp.status == 503:
                return False
            assert resp.status == 200, await resp.text()
            return True

    await _eventually(sealed, f"{region.spec.region} to accept the seal of hour {hour}")


async def _eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def _holds(replica: Region, count: int) -> None:
    async def check() -> bool:
        return _sealed_count(replica.root) == count

    await _eventually(check, f"{replica.spec.region} to hold {count} sealed partitions")


async def _source_status(replica: Region, source: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{replica.url}/v1/status", params={"tier": "warm"}) as resp,
    ):
        doc = await resp.json()
    return dict(doc["tiers"]["warm"]["sources"][source])


async def _repairs(replica: Region, reason: str) -> float:
    async with aiohttp.ClientSession() as http:
        value = await scrape_metric(
            http,
            replica.url,
            "cryptorun_replication_repairs_total",
            {"tier": "warm", "reason": reason},
        )
    return value or 0.0


def _position(replica: Region, source: str) -> dict[str, Any]:
    path = replica.root / "_state" / "feed_position" / f"warm.{source}.json"
    return dict(json.loads(path.read_text()))


async def test_feed_resumes_after_replica_and_primary_restarts(tmp_path: Path) -> None:
    """B follows A's feed from its durable position across a restart of B and one of A:
    every partition arrives identical, and no anti-entropy or resync is needed."""
    a, b = (Region(s) for s in _regions(tmp_path))
    await a.start()
    await b.start()
    try:
        for hour in range(3):
            await _seal(a, hour)
        await _holds(b, 3)
        first = _position(b, A)
        b.stop()
        for hour in range(3, 5):
            await _seal(a, hour)
        await b.start()
        await _holds(b, 5)

        async def moved_on() -> bool:
            # The position is saved right after the page's partitions are committed.
            return int((await _source_status(b, A))["feed"]["position"]) > int(first["position"])

        await _eventually(moved_on, "B's feed position to move past the restart")
        status = await _source_status(b, A)
        # Resumed from the stored position: no digest comparison since the restart.
        assert status["feed"]["last_anti_entropy"] is None
        assert status["feed"]["resyncs"] == 0
        assert status["feed"]["feed_id"] == first["feed_id"]

        a.stop()
        await a.start()
        await _seal(a, 5)
        await _holds(b, 6)
        status = await _source_status(b, A)
        assert status["feed"]["last_anti_entropy"] is None
        assert status["feed"]["resyncs"] == 0
        assert _tree(b.root) == _tree(a.root)
    finally:
        b.stop()
        a.stop()


async def test_position_older_than_retention_resyncs_by_digest(tmp_path: Path) -> None:
    """With A keeping two feed entries, a B that missed four seals is told "resync needed"
    and repairs every missing partition by digest, counted as repairs{reason="resync"}."""
    specs = _regions(tmp_path)
    specs[0].sections["replication"]["feed_retention"] = 2
    a, b = (Region(s) for s in specs)
    await a.start()
    await b.start()
    try:
        await _seal(a, 0)
        await _holds(b, 1)
        b.stop()
        for hour in range(1, 5):
            await _seal(a, hour)
        async with (
            aiohttp.ClientSession(headers=auth_headers()) as http,
            http.get(
                f"{a.url}/v1/partitions/changes",
                params={"tier": "warm", "after": str(_position(b, A)["position"])},
            ) as resp,
        ):
            assert resp.status == 409
            assert (await resp.json())["error"] == "resync_needed"
        await b.start()
        await _holds(b, 5)
        status = await _source_status(b, A)
        assert status["feed"]["resyncs"] == 1
        assert status["feed"]["last_anti_entropy"]["resync"] is True
        assert await _repairs(b, "resync") == 4
        assert _tree(b.root) == _tree(a.root)
    finally:
        b.stop()
        a.stop()


async def test_file_deleted_on_the_replica_is_repaired_by_anti_entropy(tmp_path: Path) -> None:
    """A data file deleted by hand at B is found by B's scrub and put back by the
    periodic anti-entropy pass, without any request: B ends identical to A."""
    specs = _regions(tmp_path)
    specs[1].sections["replication"].update(
        {"scrub_interval": "500ms", "anti_entropy_interval": "1s"}
    )
    seed_partitions(specs[0].storage_root, start=T0, count=4, rows=500)
    a, b = (Region(s) for s in specs)
    await a.start()
    await b.start()
    try:
        await _holds(b, 4)
        assert _tree(b.root) == _tree(a.root)
        victim = b.root / "warm" / _key(2).relpath / "part-0000.parquet"
        victim.unlink()

        async def repaired() -> bool:
            return victim.is_file() and await _repairs(b, "missing") == 1

        await _eventually(repaired, "the deleted file to be repaired")
        assert _tree(b.root) == _tree(a.root)
    finally:
        b.stop()
        a.stop()


async def test_failover_mid_feed_continues_from_the_new_primary_without_loss(
    tmp_path: Path,
) -> None:
    """C is behind on A's feed when A dies and B is promoted: C notices B's feed is
    another position space, repairs by digest from B, then follows B's feed; it ends
    with every partition A and B sealed, identical to B."""
    a, b, c = (Region(s) for s in _regions(tmp_path, (A, B, C)))
    for region in (a, b, c):
        await region.start()
    try:
        for hour in range(2):
            await _seal(a, hour)
        await _holds(b, 2)
        await _holds(c, 2)
        c.stop()  # C stops mid-feed: what A seals now reaches B only
        for hour in range(2, 4):
            await _seal(a, hour)
        await _holds(b, 4)
        a.kill()
        promoted = await operator_cli(
            "replication",
            "failover",
            "--config",
            str(b.config),
            "--tier",
            "warm",
            "--promote",
            B,
            "--demote",
            A,
            "--dry-run=false",
        )
        assert promoted.returncode == 0, promoted.stderr
        await _seal(b, 4)
        await c.start()
        await _holds(c, 5)
        await _seal(b, 5)
        await _holds(c, 6)
        status = await _source_status(c, B)
        async with (
            aiohttp.ClientSession(headers=auth_headers()) as http,
            http.get(f"{b.url}/v1/partitions/digest", params={"tier": "warm"}) as resp,
        ):
            b_feed = (await resp.json())["feed_id"]
        assert status["feed"]["feed_id"] == b_feed != _position(c, A)["feed_id"]
        assert status["feed"]["last_anti_entropy"] is not None
        assert _tree(c.root) == _tree(b.root)
    finally:
        for region in (c, b, a):
            region.stop()
