"""The one interface every coordination store implements (file, etcd).

A state store holds the role model of :mod:`cryptorun_daemon.failover.roles`
— per active-passive tier one primary and a fencing epoch, the drained
regions, and which regions are alive — and changes it only through atomic
compare-and-swap, so two concurrent promotions can never both win.

How the rest of the daemon uses it::

    store = open_state_store(config, clock=clock)          # at startup
    for rule in config.rules:                               # seed from config
        if rule.mode == "active-passive":
            await store.initialise(rule.tier, rule.from_region)
    supervisor.spawn("state-heartbeat", lambda: run_heartbeats(store, region, ttl / 3))
    async with contextlib.aclosing(store.changes()) as snapshots:
        async for snapshot in snapshots: ...               # update roles and metrics

    # POST /v1/failover
    before = await store.get(tier)
    if dry_run:
        after = before.promoted(promote, demote, expected_epoch=..., at=clock.now())
    else:
        after = await store.promote(tier, promote, demote, expected_epoch)  # persisted
    await store.close()                                     # at shutdown

Errors every method may raise: :class:`~cryptorun_daemon.errors.UsageError`
(malformed tier or region names, 400), :class:`~cryptorun_daemon.errors.ConflictError`
(409, from :meth:`StateStore.promote` only) and
:class:`~cryptorun_daemon.errors.StateStoreError` (the store cannot be read or
written, or holds data it does not understand; 503).
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, ClassVar, Self

import structlog

from cryptorun_daemon.errors import StateStoreError
from cryptorun_daemon.failover.roles import Snapshot, TierState

if TYPE_CHECKING:
    import aiohttp

    from cryptorun_daemon.config.model import Config
    from cryptorun_daemon.runtime.clock import Clock

log = structlog.get_logger("cryptorun.failover.store")


@dataclass(frozen=True)
class LeaseHealth:
    """What this process last confirmed about a region's liveness lease.

    ``expires_at`` is a reading of the store's monotonic clock by which the
    lease has certainly expired unless renewed again: the time the last
    successful grant or keep-alive was *sent*, plus the TTL etcd answered
    (etcd counts the TTL from when it handled the request, which is later, so
    the estimate errs on the early side). ``None`` while no lease is known to
    be held. ``last_error`` is why the latest renewal attempt failed, ``None``
    once one succeeded.
    """

    expires_at: float | None
    last_error: str | None = None


class StateStore(abc.ABC):
    """Roles, epochs, drain flags and liveness, changed only atomically.

    Implementations must make :meth:`promote` and :meth:`initialise` atomic
    against every other writer of the same store, including other processes
    (file) and other hosts (etcd). Reads may be served from a consistent
    snapshot that is at most as old as the call.

    Resource handling: a store may hold connections, leases and locks; use it
    as an async context manager or call :meth:`close` exactly once.
    """

    #: ``"file"`` or ``"etcd"``, as in ``[state] backend``.
    backend: ClassVar[str]

    # --- tiers (warm, cold) --------------------------------------------------------

    @abc.abstractmethod
    async def get(self, tier: str) -> TierState:
        """The current state of ``tier``.

        Error handling: :class:`UsageError` for hot or unknown tiers;
        :class:`StateStoreError` when the tier was never initialised or the
        store cannot be read.
        """

    @abc.abstractmethod
    async def initialise(self, tier: str, primary: str) -> TierState:
        """Create ``tier`` with ``primary`` at epoch 1 unless it already exists.

        Idempotent and race-free: when the tier exists (from an earlier run, or
        another region initialised it first) the stored state wins and is
        returned unchanged, whatever ``primary`` says. Callers compare the
        returned primary with their config rule to warn about drift.
        """

    @abc.abstractmethod
    async def promote(
        self,
        tier: str,
        promote: str,
        demote: str,
        expected_epoch: int | None,
        *,
        at: datetime | None = None,
    ) -> TierState:
        """Make ``promote`` the primary of ``tier`` at epoch + 1, atomically.

        The new state is durable (fsynced file / committed etcd revision)
        before this returns. ``at`` (default: now) is the transition's time;
        only a replay of another region's promotion passes it, so the epoch's
        start — which fencing compares seal times with — is the same everywhere.
        Validation is :meth:`TierState.promoted`, applied to the state as it is
        at the moment of the swap, so exactly one of two concurrent promotions
        wins.

        Error handling: :class:`ConflictError` when ``expected_epoch`` is stale,
        ``promote`` already is primary, ``demote`` is not the primary, or
        another promotion won the race; :class:`UsageError` for
        ``promote == demote`` or bad names; :class:`StateStoreError` when the
        tier is not initialised or the store fails.
        """

    # --- regions -------------------------------------------------------------------

    @abc.abstractmethod
    async def set_drained(self, region: str, drained: bool) -> None:
        """Mark ``region`` as drained (out of serving for active-active tiers) or not."""

    @abc.abstractmethod
    async def drained_regions(self) -> frozenset[str]:
        """Regions currently drained."""

    @abc.abstractmethod
    async def heartbeat(self, region: str) -> None:
        """Declare ``region`` alive for the next ``lease_ttl`` seconds.

        Call it at least every ``lease_ttl / 3`` (see :func:`run_heartbeats`).
        Once a region stops calling it, it drops out of :meth:`alive_regions`
        after at most ``lease_ttl`` (etcd: the lease expires server-side, so a
        crashed process disappears without help).
        """

    @abc.abstractmethod
    async def alive_regions(self) -> frozenset[str]:
        """Regions whose last heartbeat has not expired."""

    def lease_health(self, region: str) -> LeaseHealth | None:
        """The state of ``region``'s lease as this store last saw it; ``None``: no gating lease.

        Only a store where another region can be promoted while this one is
        cut off from it (etcd: by automatic failover once the lease lapses, or
        by an operator) answers; a primary must stop writing before that lease
        can lapse. The file store has no such lease (nothing expires remotely)
        and answers ``None``. Reads memory
        only, so it is safe from any thread.
        """
        return None

    # --- observing -----------------------------------------------------------------

    @abc.abstractmethod
    async def snapshot(self) -> Snapshot:
        """Every initialised tier, the drained and the alive regions, read together."""

    @abc.abstractmethod
    def changes(self) -> AsyncGenerator[Snapshot, None]:
        """Yield the current :class:`Snapshot`, then a new one after every change.

        Consecutive snapshots always differ; intermediate states may be
        coalesced (a consumer needs the latest state, not every step). The
        iterator runs until cancelled or closed; wrap it in
        :func:`contextlib.aclosing` so its connection is released promptly.

        Error handling: transient store failures are retried with backoff
        inside the iterator and logged; they never end it.
        Resource handling: holds one watch stream (etcd) or nothing but a
        timer (file) while iterated.
        """

    # --- lifecycle -----------------------------------------------------------------

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections and liveness (etcd revokes this store's leases)."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


async def run_heartbeats(store: StateStore, region: str, interval: float) -> None:
    """Call :meth:`StateStore.heartbeat` for ``region`` every ``interval`` seconds, forever.

    Meant to run as a supervised worker; pick ``interval <= lease_ttl / 3`` so
    one lost beat does not make the region look dead.

    Error handling: a failed beat is logged and retried at the next tick (the
    store may be briefly unreachable; liveness then lapses on its own, which
    is the truth). Cancellation ends the loop.
    Resource handling: holds nothing between beats; the lease itself belongs
    to the store and is released by :meth:`StateStore.close`.
    """
    while True:
        try:
            await store.heartbeat(region)
        except StateStoreError as exc:
            log.warning("state_heartbeat_failed", region=region, error=str(exc))
        await asyncio.sleep(interval)


def open_state_store(
    config: Config,
    *,
    clock: Clock,
    session: aiohttp.ClientSession | None = None,
) -> StateStore:
    """Build the store that ``config.state.backend`` names.

    ``session`` (etcd only) lets the daemon share its HTTP client session; the
    store then leaves closing it to the daemon.

    Error handling: :class:`StateStoreError` when etcd is selected without
    endpoints (the config loader should already refuse that).
    """
    # Imported here so a file-store deployment never imports the etcd code path
    # and the implementations can import this module for the base class.
    if config.state.backend == "etcd":
        from cryptorun_daemon.failover.store_etcd import EtcdStateStore

        if not config.state.etcd_endpoints:
            raise StateStoreError(f"{config.source}: state.backend is etcd but no etcd_endpoints")
        from cryptorun_daemon.security.etcd_access import etcd_access

        access = etcd_access(config)
        return EtcdStateStore(
            config.state.etcd_endpoints,
            prefix=config.state.etcd_prefix,
            lease_ttl=config.state.lease_ttl,
            clock=clock,
            session=session,
            ssl_context=access.ssl_context,
            user=access.user,
            password=access.password,
        )
    from cryptorun_daemon.failover.store_file import FileStateStore

    return FileStateStore(config.storage.root, lease_ttl=config.state.lease_ttl, clock=clock)
