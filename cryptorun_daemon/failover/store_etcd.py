"""The coordinated state store: a real etcd v3 cluster, through its JSON gateway.

Key layout under ``[state] etcd_prefix`` (default ``/cryptorun``)::

    {prefix}/tiers/{tier}       TierState JSON; its mod_revision guards every promotion
    {prefix}/drained/{region}   {"since": RFC 3339}; present while the region is drained
    {prefix}/alive/{region}     {"since": ..., "lease": id}; attached to a lease with TTL

Promotion is a compare-and-swap: read the tier key at mod_revision ``R``,
validate the request against what was read (:meth:`TierState.promoted`), then
commit with a transaction guarded by ``mod_revision(tier key) == R``. If any
other writer committed in between, the guard fails and nothing is written, so
two concurrent promotions cannot both win. Liveness keys live on leases: a
region that stops renewing disappears when etcd expires the lease, with no
help from the dead process. The store remembers when each lease it renewed
will have expired at the latest (:meth:`EtcdStateStore.lease_health`), so a
primary cut off from etcd can stop writing before it can be replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import ssl
from collections.abc import AsyncGenerator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

import structlog

from cryptorun_daemon.config import ActivePassiveTier, is_active_passive
from cryptorun_daemon.errors import ConflictError, StateStoreError
from cryptorun_daemon.failover.etcd_client import (
    Compare,
    EtcdClient,
    Get,
    KeyValue,
    Lease,
    Put,
    prefix_range_end,
)
from cryptorun_daemon.failover.roles import (
    Snapshot,
    TierState,
    require_active_passive,
    require_region,
)
from cryptorun_daemon.failover.store import LeaseHealth, StateStore
from cryptorun_daemon.runtime.clock import Clock, SystemClock
from cryptorun_daemon.timefmt import format_rfc3339

if TYPE_CHECKING:
    import aiohttp

log = structlog.get_logger("cryptorun.failover.store_etcd")

# A promotion that keeps losing the CAS to writers that leave it still valid
# (A→B→A flapping) gives up rather than spinning; the caller sees a conflict.
MAX_CAS_ATTEMPTS: Final = 5


class EtcdStateStore(StateStore):
    """State in etcd: CAS transactions for epochs, leases for liveness, a watch for changes.

    ``lease_ttl`` is rounded up to whole seconds (etcd raises anything below
    its minimum, about 2 s, itself). ``resync_interval`` bounds how long
    :meth:`changes` trusts a silent watch before re-reading everything.

    Resource handling: owns an :class:`EtcdClient` (and its HTTP session
    unless ``session`` is given) and the leases it granted for heartbeats;
    :meth:`close` revokes those leases so a clean shutdown drops liveness at
    once instead of after the TTL.
    """

    backend = "etcd"

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        prefix: str = "/cryptorun",
        lease_ttl: float = 10.0,
        clock: Clock | None = None,
        session: aiohttp.ClientSession | None = None,
        request_timeout: float = 5.0,
        resync_interval: float = 60.0,
        ssl_context: ssl.SSLContext | None = None,
        user: str | None = None,
        password: str | None = None,
    ) -> None:
        self.client = EtcdClient(
            endpoints,
            timeout=request_timeout,
            session=session,
            ssl_context=ssl_context,
            user=user,
            password=password,
        )
        self.prefix = prefix.rstrip("/")
        self.lease_ttl = max(1, math.ceil(lease_ttl))
        self.resync_interval = resync_interval
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._leases: dict[str, Lease] = {}
        # Replaced whole (never mutated) so a reader on another thread always
        # sees one consistent record; see lease_health().
        self._lease_health: dict[str, LeaseHealth] = {}
        self._closed = False

    # --- keys ---------------------------------------------------------------------------

    def tier_key(self, tier: str) -> bytes:
        return f"{self.prefix}/tiers/{tier}".encode()

    def drained_key(self, region: str) -> bytes:
        return f"{self.prefix}/drained/{region}".encode()

    def alive_key(self, region: str) -> bytes:
        return f"{self.prefix}/alive/{region}".encode()

    def held_lease(self, region: str) -> Lease | None:
        """The lease this store renews for ``region``'s liveness, if any."""
        return self._leases.get(region)

    def _root(self) -> bytes:
        return f"{self.prefix}/".encode()

    # --- StateStore: tiers -----------------------------------------------------------

    async def get(self, tier: str) -> TierState:
        checked = require_active_passive(tier)
        kv = await self._read_tier(checked)
        if kv is None:
            raise StateStoreError(f"tier {checked} has no state yet at etcd {self._where(checked)}")
        return _parse_tier(kv)

    async def initialise(self, tier: str, primary: str) -> TierState:
        checked = require_active_passive(tier)
        require_region(primary)
        key = self.tier_key(checked)
        state = TierState.bootstrap(checked, primary, at=self._clock.now())
        result = await self.client.txn(
            [Compare.absent(key)], success=[Put(key, _encode(state.to_json()))], failure=[Get(key)]
        )
        if result.succeeded:
            log.info("tier_initialised", tier=checked, primary=primary, store=self.backend)
            return state
        existing = result.ranges[0] if result.ranges else ()
        if not existing:  # deleted between the guard and the read: only by hand
            raise StateStoreError(f"{self._where(checked)} vanished during initialise; retry")
        return _parse_tier(existing[0])

    async def promote(
        self,
        tier: str,
        promote: str,
        demote: str,
        expected_epoch: int | None,
        *,
        at: datetime | None = None,
    ) -> TierState:
        checked = require_active_passive(tier)
        key = self.tier_key(checked)
        lost_race = False
        for _attempt in range(MAX_CAS_ATTEMPTS):
            kv = await self._read_tier(checked)
            if kv is None:
                raise StateStoreError(f"tier {checked} has no state yet in etcd")
            current = _parse_tier(kv)
            try:
                state = current.promoted(
                    promote,
                    demote,
                    expected_epoch=expected_epoch,
                    at=at or self._clock.now(),
                )
            except ConflictError as exc:
                if lost_race:
                    raise ConflictError(f"{exc} (a concurrent promotion committed first)") from exc
                raise
            result = await self.client.txn(
                [Compare.mod_revision(key, kv.mod_revision)],
                success=[Put(key, _encode(state.to_json()))],
            )
            if result.succeeded:
                log.info(
                    "tier_promoted",
                    tier=checked,
                    primary=state.primary,
                    demoted=demote,
                    epoch=state.epoch,
                    revision=result.revision,
                    store=self.backend,
                )
                return state
            # Someone else committed since our read; re-validate against theirs.
            lost_race = True
        raise ConflictError(
            f"tier {checked}: lost the compare-and-swap {MAX_CAS_ATTEMPTS} times to "
            "concurrent promotions; re-read status and retry"
        )

    # --- StateStore: regions ------------------------------------------------------------

    async def set_drained(self, region: str, drained: bool) -> None:
        require_region(region)
        key = self.drained_key(region)
        if drained:
            # Keep the first "since" when already drained: a no-op must not rewrite history.
            value = _encode({"since": format_rfc3339(self._clock.now())})
            await self.client.txn([Compare.absent(key)], success=[Put(key, value)])
        else:
            await self.client.delete(key)

    async def drained_regions(self) -> frozenset[str]:
        found = await self.client.range_prefix(f"{self.prefix}/drained/".encode())
        return frozenset(_last_segment(kv.key) for kv in found.kvs)

    async def heartbeat(self, region: str) -> None:
        """Renew ``region``'s lease, or grant a new one and re-attach its alive key.

        Each success moves :meth:`lease_health`'s ``expires_at`` to the time
        the request was sent plus the TTL etcd answered; a failure keeps the
        old expiry (the lease runs out on its own) and records the error.

        Error handling: :class:`StateStoreError` when etcd cannot be reached;
        the next call starts over if the lease expired meanwhile.
        """
        require_region(region)
        try:
            await self._renew(region)
        except StateStoreError as exc:
            held = self._lease_health.get(region)
            self._lease_health[region] = LeaseHealth(
                expires_at=held.expires_at if held is not None else None, last_error=str(exc)
            )
            raise

    async def _renew(self, region: str) -> None:
        lease = self._leases.get(region)
        if lease is not None:
            sent = self._clock.monotonic()
            ttl = await self.client.lease_keepalive(lease.id)
            if ttl > 0:
                self._lease_health[region] = LeaseHealth(expires_at=sent + ttl)
                return
            # etcd expired it (we were cut off, or paused, for longer than the TTL).
            self._lease_health[region] = LeaseHealth(expires_at=None)
        sent = self._clock.monotonic()
        lease = await self.client.lease_grant(self.lease_ttl)
        value = _encode({"since": format_rfc3339(self._clock.now()), "lease": lease.id})
        try:
            await self.client.put(self.alive_key(region), value, lease=lease.id)
        except BaseException:
            with contextlib.suppress(StateStoreError):
                await self.client.lease_revoke(lease.id)
            raise
        self._leases[region] = lease
        self._lease_health[region] = LeaseHealth(expires_at=sent + lease.ttl)

    def lease_health(self, region: str) -> LeaseHealth:
        """``region``'s lease as last confirmed here; no lease yet reads as expired (``None``)."""
        return self._lease_health.get(region, LeaseHealth(expires_at=None))

    async def alive_regions(self) -> frozenset[str]:
        found = await self.client.range_prefix(f"{self.prefix}/alive/".encode())
        return frozenset(_last_segment(kv.key) for kv in found.kvs)

    # --- StateStore: observing ------------------------------------------------------------

    async def snapshot(self) -> Snapshot:
        snapshot, _revision = await self._snapshot_at()
        return snapshot

    async def changes(self) -> AsyncGenerator[Snapshot, None]:
        """Yield the current snapshot, then a fresh one after each watched change.

        Reads everything under the prefix at revision ``R``, then watches from
        ``R + 1``, so no change between the read and the watch is missed. Each
        watch batch triggers one consistent re-read (events are coalesced).

        Error handling: a broken watch, a compacted revision or an unreachable
        etcd is logged and retried with capped exponential backoff (0.5 s → 5 s);
        the iterator never ends on its own. A watch silent for
        ``resync_interval`` is re-established.
        Resource handling: at most one watch stream is open, closed when the
        iterator is closed or cancelled.
        """
        last: Snapshot | None = None
        backoff = 0.5
        while not self._closed:
            try:
                current, revision = await self._snapshot_at()
                if current != last:
                    last = current
                    yield current
                root = self._root()
                stream = self.client.watch(
                    root,
                    prefix_range_end(root),
                    start_revision=revision + 1,
                    idle_timeout=self.resync_interval,
                )
                async with contextlib.aclosing(stream) as batches:
                    async for _batch in batches:
                        current, revision = await self._snapshot_at()
                        if current != last:
                            last = current
                            yield current
                backoff = 0.5
            except StateStoreError as exc:
                log.warning("state_watch_failed", error=str(exc), retry_in=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    # --- lifecycle ---------------------------------------------------------------------

    async def close(self, *, revoke_leases: bool = True) -> None:
        """Revoke this store's heartbeat leases (unless told not to) and close the client.

        ``revoke_leases=False`` leaves liveness to expire by TTL, which is what
        a crash looks like; tests use it to observe expiry.
        """
        if self._closed:
            return
        self._closed = True
        try:
            if revoke_leases:
                for region, lease in list(self._leases.items()):
                    try:
                        await self.client.lease_revoke(lease.id)
                    except StateStoreError as exc:
                        log.warning("lease_revoke_failed", region=region, error=str(exc))
            self._leases.clear()
            self._lease_health.clear()
        finally:
            await self.client.close()

    # --- helpers -----------------------------------------------------------------------

    def _where(self, tier: str) -> str:
        return self.tier_key(tier).decode()

    async def _read_tier(self, tier: ActivePassiveTier) -> KeyValue | None:
        found = await self.client.range(self.tier_key(tier))
        return found.kvs[0] if found.kvs else None

    async def _snapshot_at(self) -> tuple[Snapshot, int]:
        """Everything under the prefix, read at one revision, and that revision."""
        found = await self.client.range_prefix(self._root())
        tiers: dict[ActivePassiveTier, TierState] = {}
        drained: set[str] = set()
        alive: set[str] = set()
        for kv in found.kvs:
            rest = kv.key[len(self._root()) :].decode("utf-8", "replace")
            kind, _, name = rest.partition("/")
            if kind == "tiers" and is_active_passive(name):
                tiers[name] = _parse_tier(kv)
            elif kind == "drained" and name:
                drained.add(name)
            elif kind == "alive" and name:
                alive.add(name)
        snapshot = Snapshot(tiers=tiers, drained=frozenset(drained), alive=frozenset(alive))
        return snapshot, found.revision


def _encode(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _parse_tier(kv: KeyValue) -> TierState:
    where = kv.key.decode("utf-8", "replace")
    try:
        data = json.loads(kv.value)
    except ValueError:
        raise StateStoreError(f"etcd {where}: value is not JSON") from None
    try:
        return TierState.from_json(data)
    except StateStoreError as exc:
        raise StateStoreError(f"etcd {where}: {exc}") from None


def _last_segment(key: bytes) -> str:
    return key.rsplit(b"/", 1)[-1].decode("utf-8", "replace")
