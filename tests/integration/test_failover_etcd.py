"""Failover with the etcd state store: two daemon processes sharing one real etcd.

etcd is the shared truth: a promotion made anywhere (either daemon's API, or
another etcd client) reaches every daemon through its watch; concurrent
promotions are decided by etcd's compare-and-swap, so exactly one wins; with
``auto_failover`` a replica takes over once the primary's lease is gone.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cryptorun_daemon.failover.store_etcd import EtcdStateStore
from tests.harness.admin import post_failover
from tests.harness.daemons import RegionSpec, run_daemon_process, stop_process, two_regions
from tests.harness.etcd import EtcdServer, etcd_prefix, shared_etcd_server
from tests.harness.wait import eventually

__all__ = ["etcd_prefix", "shared_etcd_server"]  # pytest fixtures used by name below

EU, US = "eu-central", "us-east"

pytestmark = [pytest.mark.needs_etcd, pytest.mark.slow]


def etcd_regions(
    tmp_path: Path, server: EtcdServer, prefix: str, **state: Any
) -> tuple[RegionSpec, RegionSpec]:
    a, b = two_regions(tmp_path)
    for spec in (a, b):
        spec.sections["state"] = {
            "backend": "etcd",
            "etcd_endpoints": [server.client_url],
            "etcd_prefix": prefix,
            "lease_ttl": "5s",
            **state,
        }
        spec.sections["log"] = {"format": "json"}
    return a, b


async def status_of(http: aiohttp.ClientSession, base_url: str, tier: str) -> dict[str, Any]:
    async with http.get(f"{base_url}/v1/status?tier={tier}") as resp:
        doc: dict[str, Any] = await resp.json()
        return doc


async def until_primary(
    http: aiohttp.ClientSession,
    base_url: str,
    tier: str,
    primary: str,
    epoch: int,
    timeout: float = 15.0,
) -> dict[str, Any]:
    """Poll a daemon's status until ``tier`` shows ``primary`` at ``epoch``."""
    doc: dict[str, Any] = {}

    async def reached() -> bool:
        nonlocal doc
        doc = await status_of(http, base_url, tier)
        info = doc["tiers"][tier]
        return (info.get("primary"), info.get("epoch")) == (primary, epoch)

    await eventually(
        reached,
        f"{base_url}: {tier} at {primary}@{epoch}",
        timeout=timeout,
        detail=lambda: doc["tiers"][tier],
    )
    return doc


async def test_a_promotion_anywhere_reaches_both_daemons_through_the_watch(
    tmp_path: Path,
    shared_etcd_server: EtcdServer,
    etcd_prefix: str,
) -> None:
    """Failover via eu-central's API is seen by us-east; a promotion written straight to
    etcd by another client (no notify at all) is seen by both through their watches, and
    the epoch gauge follows in each."""
    a, b = etcd_regions(tmp_path, shared_etcd_server, etcd_prefix)
    async with (
        run_daemon_process(a.write()),
        run_daemon_process(b.write()),
        aiohttp.ClientSession() as http,
    ):
        doc = await until_primary(http, b.base_url, "warm", EU, 1)
        assert doc["state_backend"] == "etcd"
        assert doc["failover"]["alive_regions"] == [EU, US]  # each beats before it is ready
        code, answer = await post_failover(
            http, a.base_url, {"tier": "warm", "promote": US, "demote": EU, "dry_run": False}
        )
        assert code == 200, answer
        assert answer["state_backend"] == "etcd"
        await until_primary(http, b.base_url, "warm", US, 2)

        store = EtcdStateStore([shared_etcd_server.client_url], prefix=etcd_prefix)
        async with store:
            await store.promote("cold", US, EU, expected_epoch=1)
        for spec in (a, b):
            doc = await until_primary(http, spec.base_url, "cold", US, 2)
            async with http.get(f"{spec.base_url}/metrics") as resp:
                text = await resp.text()
            assert 'cryptorun_failover_epoch{tier="cold"} 2.0' in text
            assert 'cryptorun_region_role{region="us-east",tier="cold"} 1.0' in text
        assert doc["tiers"]["cold"]["role"] == "primary"  # us-east's own view


async def test_concurrent_promotions_via_both_daemons_exactly_one_wins(
    tmp_path: Path,
    shared_etcd_server: EtcdServer,
    etcd_prefix: str,
) -> None:
    """The same promotion sent to both daemons at once: etcd's CAS lets one commit (200)
    and the other is refused with 409; the epoch goes up by exactly one."""
    a, b = etcd_regions(tmp_path, shared_etcd_server, etcd_prefix)
    async with (
        run_daemon_process(a.write()),
        run_daemon_process(b.write()),
        aiohttp.ClientSession() as http,
    ):
        await until_primary(http, b.base_url, "warm", EU, 1)
        body = {"tier": "warm", "promote": US, "demote": EU, "dry_run": False}
        results = await asyncio.gather(
            post_failover(http, a.base_url, body), post_failover(http, b.base_url, body)
        )
        codes = sorted(code for code, _ in results)
        assert codes == [200, 409], results
        loser = next(doc for code, doc in results if code == 409)
        assert loser["error"] == "conflict"
        assert "us-east is already primary at epoch 2" in loser["detail"]
        for spec in (a, b):
            await until_primary(http, spec.base_url, "warm", US, 2)


async def test_auto_failover_promotes_a_replica_when_the_primary_lease_is_gone(
    tmp_path: Path,
    shared_etcd_server: EtcdServer,
    etcd_prefix: str,
) -> None:
    """With auto_failover on, stopping the primary (its lease is revoked) makes us-east
    promote itself for warm and cold after the lease TTL grace, once, at epoch 2. Before,
    its status says why it does not: the primary holds its lease."""
    a, b = etcd_regions(
        tmp_path,
        shared_etcd_server,
        etcd_prefix,
        auto_failover=True,
        auto_failover_min_interval="1s",
    )
    async with (
        run_daemon_process(a.write()) as a_proc,
        run_daemon_process(b.write()),
        aiohttp.ClientSession() as http,
    ):
        doc = await until_primary(http, b.base_url, "warm", EU, 1)

        async def eu_alive() -> bool:
            nonlocal doc
            doc = await status_of(http, b.base_url, "warm")
            return (
                EU in (doc["failover"]["alive_regions"] or [])
                and doc["tiers"]["warm"]["auto_failover"]["reason"] == "primary_alive"
            )

        await eventually(eu_alive, "us-east to see eu-central alive", detail=lambda: doc)
        assert doc["tiers"]["warm"]["auto_failover"]["enabled"] is True
        stop_process(a_proc.proc)
        doc = await until_primary(http, b.base_url, "warm", US, 2, timeout=20)
        await until_primary(http, b.base_url, "cold", US, 2, timeout=20)
        assert doc["tiers"]["warm"]["history"][-1]["demoted"] == EU
