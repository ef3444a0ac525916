"""A primary that loses etcd stops writing, and resumes once etcd is back.

One daemon process (eu-central, primary of warm) on the etcd state store with
a 5 s lease; etcd is a real server that the tests pause (SIGSTOP), kill
(SIGKILL) and restart on the same data folder. Writing is probed with
``POST /v1/partitions/seal``; the daemon's own account is ``/v1/status``
(``tiers.warm.write_refusal_reason``) and ``/readyz`` (``write_refusals``).
Everything is polled until a deadline; nothing asserts how long a step took.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import date
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cryptorun_daemon.storage.layout import PartitionKey
from tests.harness.daemons import RegionSpec, auth_headers, run_daemon_process, two_regions
from tests.harness.etcd import EtcdServer, etcd_server
from tests.harness.testdata import write_trade_partition

__all__ = ["etcd_server"]  # pytest fixture used by name below

EU = "eu-central"
LEASE_TTL = 5.0
# The refusal must come within the lease TTL; the slack covers a loaded CI machine.
WITHIN = LEASE_TTL + 15.0
LEASE_REASONS = {"lease_expiring", "state_store_unreachable"}

pytestmark = [pytest.mark.needs_etcd, pytest.mark.slow]


def primary_on_etcd(tmp_path: Path, server: EtcdServer) -> RegionSpec:
    a, _b = two_regions(tmp_path)
    a.sections["state"] = {
        "backend": "etcd",
        "etcd_endpoints": [server.client_url],
        "lease_ttl": f"{LEASE_TTL:g}s",
    }
    a.sections["log"] = {"format": "json"}
    return a


def partition(spec: RegionSpec, hour: int) -> dict[str, str]:
    """Write an unsealed warm trade partition for ``hour``; return the seal request body."""
    key = PartitionKey(
        day=date(2025, 9, 1),
        hour=hour,
        tier="warm",
        dataset="trade",
        venue="kraken",
        symbol="BTC-USD",
    )
    write_trade_partition(spec.storage_root, key, rows=20, origin=EU, seed=hour)
    return {"tier": "warm", "partition": key.relpath}


async def seal(http: aiohttp.ClientSession, spec: RegionSpec, body: dict[str, str]) -> int:
    async with http.post(
        f"{spec.base_url}/v1/partitions/seal", json=body, headers=auth_headers()
    ) as resp:
        await resp.read()
        return resp.status


async def warm_status(http: aiohttp.ClientSession, spec: RegionSpec) -> dict[str, Any]:
    async with http.get(f"{spec.base_url}/v1/status?tier=warm") as resp:
        doc: dict[str, Any] = await resp.json()
        warm: dict[str, Any] = doc["tiers"]["warm"]
        return warm


async def poll(
    what: str, probe: Callable[[], Awaitable[Any]], done: Callable[[Any], bool], timeout: float
) -> Any:
    """Call ``probe`` until ``done(result)``; fail naming ``what`` and the last result."""
    deadline = time.monotonic() + timeout
    while True:
        result = await probe()
        if done(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout:g} s; last: {result!r}")
        await asyncio.sleep(0.2)


async def assert_refusing(http: aiohttp.ClientSession, spec: RegionSpec, hour: int) -> None:
    """Status, /readyz and a seal request all say: primary, but not writing, because of etcd."""
    warm = await poll(
        "a lease refusal in status",
        lambda: warm_status(http, spec),
        lambda w: w["write_refusal_reason"] in LEASE_REASONS,
        WITHIN,
    )
    assert warm["primary"] == EU
    assert warm["role"] == "primary"
    assert "etcd" in warm["write_refusal"]
    async with http.get(f"{spec.base_url}/readyz") as resp:
        ready = await resp.json()
    assert resp.status == 200, ready  # reads and replication go on
    assert "warm" in ready["write_refusals"], ready
    assert await seal(http, spec, partition(spec, hour)) == 503


async def assert_writing_again(http: aiohttp.ClientSession, spec: RegionSpec, hour: int) -> None:
    await poll(
        "the lease refusal to clear",
        lambda: warm_status(http, spec),
        lambda w: w["write_refusal"] is None,
        WITHIN + 20.0,  # etcd may first expire the old lease; a new one is granted
    )
    assert await seal(http, spec, partition(spec, hour)) == 200


async def test_a_primary_stops_sealing_while_etcd_is_paused_and_resumes_after(
    tmp_path: Path, etcd_server: EtcdServer
) -> None:
    """etcd SIGSTOPped under a sealing primary: within the lease TTL the primary reports a
    lease refusal (status write_refusal_reason, /readyz write_refusals) and answers a seal
    request with 503; after SIGCONT it seals again without a restart (still primary)."""
    spec = primary_on_etcd(tmp_path, etcd_server)
    async with run_daemon_process(spec.write()), aiohttp.ClientSession() as http:
        assert await seal(http, spec, partition(spec, 1)) == 200
        etcd_server.pause()
        try:
            await assert_refusing(http, spec, 2)
        finally:
            etcd_server.resume()
        await assert_writing_again(http, spec, 3)


async def test_a_primary_stops_sealing_when_etcd_dies_and_recovers_when_it_returns(
    tmp_path: Path, etcd_server: EtcdServer
) -> None:
    """etcd killed (SIGKILL) under a sealing primary: the primary reports
    state_store_unreachable and refuses to seal; etcd restarted on the same data folder:
    the primary renews (or regains) its lease and seals again, without a restart."""
    spec = primary_on_etcd(tmp_path, etcd_server)
    async with run_daemon_process(spec.write()), aiohttp.ClientSession() as http:
        assert await seal(http, spec, partition(spec, 1)) == 200
        etcd_server.kill()
        try:
            await assert_refusing(http, spec, 2)
            warm = await poll(
                "the unreachable reason",
                lambda: warm_status(http, spec),
                lambda w: w["write_refusal_reason"] == "state_store_unreachable",
                WITHIN,
            )
            assert "cannot renew its etcd lease" in warm["write_refusal"]
        finally:
            await asyncio.to_thread(etcd_server.restart)
        await assert_writing_again(http, spec, 3)
