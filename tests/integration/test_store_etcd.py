"""The etcd state store against a real etcd v3 server on loopback (Debian ``etcd-server``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from cryptorun_daemon.config.model import AdminConfig, Config, StateConfig, StorageConfig
from cryptorun_daemon.errors import ConflictError, StateStoreError, UsageError
from cryptorun_daemon.failover.etcd_client import Compare, EtcdClient, Get, Put
from cryptorun_daemon.failover.roles import TierState
from cryptorun_daemon.failover.store import LeaseHealth, open_state_store
from cryptorun_daemon.failover.store_etcd import EtcdStateStore
from cryptorun_daemon.runtime.clock import FakeClock
from tests.harness.etcd import EtcdServer, etcd_prefix, running_etcd, shared_etcd_server
from tests.harness.net import free_port
from tests.harness.wait import eventually

# Imported so pytest finds the fixtures: one etcd for the module, a key prefix per test.
__all__ = ["etcd_prefix", "shared_etcd_server"]

DEADLINE = 15.0  # generous: lease expiry alone takes ~2-3 s on a real server


@pytest.fixture
def etcd(shared_etcd_server: EtcdServer) -> EtcdServer:
    """The module's etcd server (tests isolate themselves by ``etcd_prefix``)."""
    return shared_etcd_server


@pytest.fixture
async def make_store(
    etcd: EtcdServer, etcd_prefix: str
) -> AsyncIterator[Callable[..., EtcdStateStore]]:
    """Build stores on the module's etcd under this test's prefix; all closed after the test."""
    stores: list[EtcdStateStore] = []

    def make(**kwargs: object) -> EtcdStateStore:
        options: dict[str, object] = {"prefix": etcd_prefix, "lease_ttl": 1.0, "clock": FakeClock()}
        options.update(kwargs)
        store = EtcdStateStore([etcd.client_url], **options)  # type: ignore[arg-type]
        stores.append(store)
        return store

    yield make
    for store in stores:
        await store.close()


# --- the raw client ----------------------------------------------------------------------


@pytest.mark.needs_etcd
async def test_client_put_range_and_txn_compare_on_mod_revision(
    etcd: EtcdServer, etcd_prefix: str
) -> None:
    """Put/range round-trip bytes; a txn guarded by a stale mod_revision runs its failure branch."""
    client = EtcdClient([etcd.client_url])
    k = f"{etcd_prefix}/k".encode()
    try:
        rev = await client.put(k, b"\x00v1")
        found = await client.range(k)
        assert [kv.value for kv in found.kvs] == [b"\x00v1"]
        assert found.kvs[0].mod_revision == rev
        ok = await client.txn([Compare.mod_revision(k, rev)], success=[Put(k, b"v2")])
        assert ok.succeeded
        stale = await client.txn(
            [Compare.mod_revision(k, rev)], success=[Put(k, b"v3")], failure=[Get(k)]
        )
        assert not stale.succeeded
        assert [kv.value for kv in stale.ranges[0]] == [b"v2"]
        assert (await client.txn([Compare.value_equals(k, b"v2")])).succeeded
        assert not (await client.txn([Compare.absent(k)])).succeeded
        assert await client.delete(k) == 1
        assert (await client.txn([Compare.absent(k)])).succeeded
    finally:
        await client.close()


@pytest.mark.needs_etcd
async def test_client_reports_etcd_errors_clearly(etcd: EtcdServer) -> None:
    """An error answer from etcd carries the call, the URL and etcd's own message."""
    client = EtcdClient([etcd.client_url])
    try:
        assert await client.lease_revoke(123456789) is False
        assert await client.lease_keepalive(123456789) == 0
        with pytest.raises(StateStoreError, match=r"/v3/kv/put.*HTTP 400.*key is not provided"):
            await client.put(b"", b"value")
    finally:
        await client.close()


async def test_client_unreachable_endpoints_are_a_store_error() -> None:
    """With every endpoint refusing connections the error lists each endpoint tried."""
    ports = [free_port(), free_port()]
    client = EtcdClient([f"http://127.0.0.1:{p}" for p in ports], timeout=2.0)
    try:
        with pytest.raises(StateStoreError, match="etcd unreachable") as info:
            await client.range(b"/k")
        for port in ports:
            assert str(port) in str(info.value)
    finally:
        await client.close()


@pytest.mark.needs_etcd
async def test_client_fails_over_to_a_working_endpoint(etcd: EtcdServer, etcd_prefix: str) -> None:
    """A dead first endpoint is skipped; the call succeeds on the next one."""
    dead = f"http://127.0.0.1:{free_port()}"
    client = EtcdClient([dead, etcd.client_url], timeout=2.0)
    k = f"{etcd_prefix}/k".encode()
    try:
        await client.put(k, b"v")
        assert (await client.range(k)).kvs[0].value == b"v"
    finally:
        await client.close()


# --- the store -------------------------------------------------------------------------


@pytest.mark.needs_etcd
async def test_initialise_is_idempotent_and_first_writer_wins(
    make_store: Callable[..., EtcdStateStore],
) -> None:
    """Two regions initialising the same tier agree on the first one's state (epoch 1)."""
    first, second = make_store(), make_store()
    a = await first.initialise("warm", "eu-central")
    b = await second.initialise("warm", "us-east")
    assert a == b
    assert (a.primary, a.epoch) == ("eu-central", 1)
    assert await second.get("warm") == a


@pytest.mark.needs_etcd
async def test_get_before_initialise_and_hot_tier_are_refused(
    make_store: Callable[..., EtcdStateStore],
) -> None:
    """An uninitialised tier is a store error; hot has no primary at all."""
    store = make_store()
    with pytest.raises(StateStoreError, match="no state yet"):
        await store.get("cold")
    with pytest.raises(UsageError):
        await store.get("hot")


@pytest.mark.needs_etcd
async def test_promotion_is_a_cas_on_the_epoch(
    make_store: Callable[..., EtcdStateStore], etcd: EtcdServer, etcd_prefix: str
) -> None:
    """A promotion commits epoch + 1; a second one at the old epoch is a stale conflict."""
    store = make_store()
    await store.initialise("warm", "eu-central")
    promoted = await store.promote("warm", "us-east", "eu-central", 1)
    assert (promoted.primary, promoted.epoch) == ("us-east", 2)
    with pytest.raises(ConflictError, match="stale epoch 1"):
        await store.promote("warm", "eu-central", "us-east", 1)
    with pytest.raises(ConflictError, match="already primary"):
        await store.promote("warm", "us-east", "eu-central", None)
    # What is in etcd is exactly the documented JSON at the documented key.
    client = EtcdClient([etcd.client_url])
    try:
        kv = (await client.range(f"{etcd_prefix}/tiers/warm".encode())).kvs[0]
    finally:
        await client.close()
    assert TierState.from_json(json.loads(kv.value)) == promoted
    assert await make_store().get("warm") == promoted


@pytest.mark.needs_etcd
@pytest.mark.parametrize("expected_epoch", [1, None])
async def test_two_concurrent_promotions_exactly_one_wins(
    make_store: Callable[..., EtcdStateStore], etcd_prefix: str, expected_epoch: int | None
) -> None:
    """Two stores (separate connections) promote different regions at once: one wins, one 409s."""
    setup = make_store()
    for round_ in range(5):  # several rounds so the race really overlaps at least once
        tier = "warm" if round_ % 2 == 0 else "cold"
        prefix = f"{etcd_prefix}/race-{round_}"
        await make_store(prefix=prefix).initialise(tier, "eu-central")
        left, right = make_store(prefix=prefix), make_store(prefix=prefix)
        results = await asyncio.gather(
            left.promote(tier, "us-east", "eu-central", expected_epoch),
            right.promote(tier, "ap-south", "eu-central", expected_epoch),
            return_exceptions=True,
        )
        winners = [r for r in results if isinstance(r, TierState)]
        losers = [r for r in results if isinstance(r, ConflictError)]
        assert len(winners) == 1, results
        assert len(losers) == 1, results
        final = await make_store(prefix=prefix).get(tier)
        assert final == winners[0]
        assert final.epoch == 2
    await setup.close()


@pytest.mark.needs_etcd
async def test_many_concurrent_promotions_exactly_one_wins(
    make_store: Callable[..., EtcdStateStore],
) -> None:
    """Eight concurrent promotions at the same expected epoch: exactly one commits."""
    await make_store().initialise("warm", "eu-central")
    stores = [make_store() for _ in range(8)]
    results = await asyncio.gather(
        *(s.promote("warm", f"region-{i}", "eu-central", 1) for i, s in enumerate(stores)),
        return_exceptions=True,
    )
    assert sum(isinstance(r, TierState) for r in results) == 1, results
    assert sum(isinstance(r, ConflictError) for r in results) == 7, results
    assert (await stores[0].get("warm")).epoch == 2


@pytest.mark.needs_etcd
async def test_drained_regions_are_set_and_cleared(
    make_store: Callable[..., EtcdStateStore],
) -> None:
    """Drain flags are shared through etcd and can be cleared."""
    a, b = make_store(), make_store()
    await a.set_drained("eu-central", True)
    await a.set_drained("eu-central", True)
    assert await b.drained_regions() == {"eu-central"}
    await b.set_drained("eu-central", False)
    assert await a.drained_regions() == frozenset()


@pytest.mark.needs_etcd
async def test_lease_expiry_removes_liveness(make_store: Callable[..., EtcdStateStore]) -> None:
    """A region that stops heartbeating (crash: no revoke) drops out when its lease expires."""
    crashed, observer = make_store(lease_ttl=1.0), make_store()
    await crashed.heartbeat("eu-central")
    await crashed.heartbeat("eu-central")  # a renewal keeps the same lease
    assert await observer.alive_regions() == {"eu-central"}
    await crashed.close(revoke_leases=False)

    async def gone() -> bool:
        return "eu-central" not in await observer.alive_regions()

    await eventually(gone, "expired lease removes eu-central from alive regions", timeout=DEADLINE)


@pytest.mark.needs_etcd
async def test_heartbeats_keep_a_region_alive_past_its_ttl(
    make_store: Callable[..., EtcdStateStore],
) -> None:
    """Renewing faster than the TTL keeps the alive key for several TTLs."""
    beating, observer = make_store(lease_ttl=1.0), make_store()
    await beating.heartbeat("us-east")
    lease = beating.held_lease("us-east")
    assert lease is not None
    loop = asyncio.get_running_loop()
    until = loop.time() + 1.5 * lease.ttl
    while loop.time() < until:
        await beating.heartbeat("us-east")
        assert "us-east" in await observer.alive_regions()
        await asyncio.sleep(lease.ttl / 4)


@pytest.mark.needs_etcd
async def test_heartbeat_after_expiry_re_registers(
    make_store: Callable[..., EtcdStateStore],
) -> None:
    """If the lease expired (e.g. a long pause), the next heartbeat grants a new one."""
    store, observer = make_store(lease_ttl=1.0), make_store()
    await store.heartbeat("eu-central")
    old = store.held_lease("eu-central")
    assert old is not None
    await store.client.lease_revoke(old.id)  # what expiry does, without waiting for it
    assert await observer.alive_regions() == frozenset()
    await store.heartbeat("eu-central")
    new = store.held_lease("eu-central")
    assert new is not None
    assert new.id != old.id
    assert await observer.alive_regions() == {"eu-central"}


@pytest.mark.needs_etcd
async def test_lease_health_keeps_the_last_confirmed_expiry_and_the_renewal_error(
    tmp_path: Path,
) -> None:
    """lease_health(): no lease reads as expired; each grant or keep-alive moves the expiry to
    the monotonic time it was sent plus the TTL etcd answered; a failed renewal (etcd
    killed) keeps that expiry and records why, so writers can stop before it passes."""
    clock = FakeClock()
    async with running_etcd(tmp_path) as server:
        store = EtcdStateStore([server.client_url], lease_ttl=3.0, clock=clock, request_timeout=2.0)
        try:
            assert store.lease_health("eu-central") == LeaseHealth(expires_at=None)
            await store.heartbeat("eu-central")  # grant, sent at monotonic 0
            assert store.lease_health("eu-central") == LeaseHealth(expires_at=3.0)
            clock.advance(1.0)
            await store.heartbeat("eu-central")  # keep-alive, sent at 1
            assert store.lease_health("eu-central") == LeaseHealth(expires_at=4.0)
            server.kill()
            clock.advance(1.0)
            with pytest.raises(StateStoreError):
                await store.heartbeat("eu-central")
            after = store.lease_health("eu-central")
            assert after.expires_at == 4.0
            assert after.last_error is not None
            assert "unreachable" in after.last_error
        finally:
            await store.close(revoke_leases=False)


async def test_close_revokes_leases_so_liveness_drops_at_once(
    make_store: Callable[..., EtcdStateStore],
) -> None:
    """A clean shutdown removes the region from the alive set without waiting for the TTL."""
    store, observer = make_store(lease_ttl=30.0), make_store()
    await store.heartbeat("eu-central")
    assert await observer.alive_regions() == {"eu-central"}
    await store.close()
    assert await observer.alive_regions() == frozenset()


@pytest.mark.needs_etcd
async def test_watch_delivers_promotion_drain_and_liveness_changes(
    make_store: Callable[..., EtcdStateStore],
) -> None:
    """``changes()`` yields the current snapshot, then each change another store makes."""
    watcher, writer = make_store(), make_store()
    await writer.initialise("warm", "eu-central")
    async with asyncio.timeout(DEADLINE), contextlib.aclosing(watcher.changes()) as snapshots:
        first = await anext(snapshots)
        assert first.tiers["warm"].epoch == 1
        await writer.promote("warm", "us-east", "eu-central", 1)
        second = await anext(snapshots)
        assert (second.tiers["warm"].primary, second.tiers["warm"].epoch) == ("us-east", 2)
        await writer.set_drained("ap-south", True)
        assert (await anext(snapshots)).drained == {"ap-south"}
        await writer.heartbeat("us-east")
        assert (await anext(snapshots)).alive == {"us-east"}


@pytest.mark.needs_etcd
async def test_watch_resyncs_after_an_idle_timeout(
    make_store: Callable[..., EtcdStateStore],
) -> None:
    """A watch idle for ``resync_interval`` is re-established and still delivers changes."""
    watcher, writer = make_store(resync_interval=0.2), make_store()
    await writer.initialise("cold", "eu-central")
    async with asyncio.timeout(DEADLINE), contextlib.aclosing(watcher.changes()) as snapshots:
        assert (await anext(snapshots)).tiers["cold"].epoch == 1
        await asyncio.sleep(0.6)  # several idle resyncs happen meanwhile
        await writer.promote("cold", "us-east", "eu-central", 1)
        assert (await anext(snapshots)).tiers["cold"].epoch == 2


async def test_watch_keeps_retrying_while_etcd_is_unreachable(tmp_path: Path) -> None:
    """``changes()`` does not end when etcd is down; it logs and retries until cancelled."""
    store = EtcdStateStore([f"http://127.0.0.1:{free_port()}"], request_timeout=1.0)
    try:
        iterator = store.changes()
        task = asyncio.ensure_future(anext(iterator))
        await asyncio.sleep(1.0)
        assert not task.done()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await iterator.aclose()
    finally:
        await store.close()


async def test_open_state_store_builds_the_etcd_store_from_config(tmp_path: Path) -> None:
    """``backend = "etcd"`` in config gives an etcd store with the configured prefix and TTL."""
    config = Config(
        source=tmp_path / "region.toml",
        region="eu-central",
        admin=AdminConfig(host="127.0.0.1", port=9100, token_file=None),
        storage=StorageConfig(root=tmp_path),
        peers={},
        rules=(),
        state=StateConfig(
            backend="etcd",
            etcd_endpoints=("http://127.0.0.1:2379",),
            etcd_prefix="/prod/",
            lease_ttl=4.5,
        ),
    )
    store = open_state_store(config, clock=FakeClock())
    assert isinstance(store, EtcdStateStore)
    assert store.prefix == "/prod"
    assert store.lease_ttl == 5
    assert store.tier_key("warm") == b"/prod/tiers/warm"
    await store.close()
