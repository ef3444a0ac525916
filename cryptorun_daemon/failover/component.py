"""The failover subsystem as a daemon component: roles, epochs, fence, peer health, API.

What it does for the daemon:

- opens the state store (``[state] backend``), seeds warm/cold from the config
  rules (``initialise`` is idempotent: a stored primary wins over config, with a
  warning), keeps this region's heartbeat, and follows ``store.changes()`` into
  an in-memory cache, the persistent storage fence (``failover/fence_keeper.py``) and
  the ``cryptorun_region_role`` / ``cryptorun_failover_epoch`` gauges;
- probes every peer (``failover/peers.py``: ``cryptorun_peer_up{peer}``; a
  peer is *down* after ``replication.peer_down_after`` without a success);
- serves ``POST /v1/failover`` and the peer endpoint ``POST /v1/failover/notify``
  (``failover/api.py``);
- with ``[state] auto_failover`` (etcd), promotes this region when the
  primary's lease is gone long enough, and otherwise records which guard held
  (``failover/auto.py``: ``tiers.<tier>.auto_failover`` in ``/v1/status``).

Interface for replication and fencing (stable; other components find this one
as ``ctx.components["failover"]``):

- :meth:`FailoverComponent.current` / :meth:`~FailoverComponent.epoch` /
  :meth:`~FailoverComponent.is_primary` read the cache (no I/O, never block);
- :meth:`~FailoverComponent.write_refusal_reason` says why this region, though
  primary, may not write now (with etcd: :meth:`~FailoverComponent.lease_refusal`,
  also installed as the storage root's write permit, so every seal and commit
  asks it at its commit point);
- :meth:`~FailoverComponent.add_listener` registers a synchronous callback run
  on the event loop after every change (after the fence was advanced);
  :meth:`~FailoverComponent.wait_for_change` awaits a newer epoch;
- :meth:`~FailoverComponent.peer_health` and :meth:`~FailoverComponent.report_peer`
  (failed pulls count as failed probes);
- :attr:`~FailoverComponent.fence` (:class:`~cryptorun_daemon.failover.fence_keeper.FenceKeeper`):
  ``serve_refusal(tier)`` for the partition server, ``count(tier, operation)``.

File backend = per-region state. Each region's file store lives under its own
``storage.root``, so a promotion is persisted in the store of the daemon that
received it and then *propagated*: by ``/v1/failover/notify`` to every reachable
peer, and on rejoin by the peer prober, which reads each peer's ``/v1/status``
and replays transitions it has not seen. A receiver adopts a state only when its
epoch is higher, and only by replaying the exact transitions through
``store.promote`` (so the local epoch still grows one step at a time); states
that disagree at the same epoch are a divergence, refused with 409. etcd is the
shared truth: notify only triggers an immediate re-read. See docs/FAILOVER.md.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import structlog
from aiohttp import web

from cryptorun_daemon.config import ACTIVE_PASSIVE_TIERS, Config
from cryptorun_daemon.errors import ConflictError, StateStoreError
from cryptorun_daemon.failover.adoption import PeerAdoption
from cryptorun_daemon.failover.api import FailoverApi
from cryptorun_daemon.failover.auto import AutoDecision, AutoFailover
from cryptorun_daemon.failover.fence_keeper import FenceKeeper
from cryptorun_daemon.failover.peers import PeerHealth, PeerMonitor, StatusHandler, describe
from cryptorun_daemon.failover.roles import (
    Snapshot,
    TierState,
    export_role_metrics,
)
from cryptorun_daemon.failover.store import StateStore, open_state_store, run_heartbeats
from cryptorun_daemon.failover.write_gate import Refusal, WriteGate
from cryptorun_daemon.runtime.component import DaemonContext, ReloadResult, changed_sections
from cryptorun_daemon.storage.fence_lock import install_write_permit
from cryptorun_daemon.timefmt import format_rfc3339

log = structlog.get_logger("cryptorun.failover")

#: Called on the event loop after the cached state of a tier changed: ``(new, old)``.
Listener = Callable[[TierState, TierState | None], None]
#: ``(reason, detail)``: why this region may not write a tier as its primary now.

FIRST_LOAD_TIMEOUT: Final = 8.0
STATUS_HISTORY: Final = 10  # transitions shown in /v1/status (enough to replay a rejoin)

__all__ = ["FailoverComponent", "Listener", "PeerHealth"]


class FailoverComponent:
    """Roles, epochs, the storage fence and peer health for one region; the failover API.

    Error handling: store failures in workers are logged and retried (the
    supervisor restarts a crashed worker); in handlers they answer 503. Nothing
    a peer does can make a failover fail once the new epoch is persisted.
    Resource handling: ``start`` opens the store (sharing ``ctx.http``);
    ``stop`` cancels this component's workers, then closes the store (etcd
    revokes the heartbeat lease, so liveness drops at once).
    """

    name = "failover"

    def __init__(self, ctx: DaemonContext) -> None:
        self.ctx = ctx
        self.region = ctx.config.region
        self.store: StateStore | None = None
        self._states: dict[str, TierState] = {}
        # The epoch each tier had when this region first loaded it (file store: maybe stale).
        self._loaded_epochs: dict[str, int] = {}
        self._alive: frozenset[str] = frozenset()
        self._ever_alive: set[str] = set()
        self._snapshot_seen = False
        self._listeners: list[Listener] = []
        self._changed = asyncio.Event()
        self._problems: dict[str, str] = {}
        self._worker_tasks: set[asyncio.Task[Any]] = set()
        self._remove_permit: Callable[[], None] | None = None
        self.auto = AutoFailover(self.region, ctx.config.state)
        self.peers = PeerMonitor(ctx)
        self.fence = FenceKeeper(
            root=ctx.config.storage.root,
            region=self.region,
            metrics=ctx.metrics,
            current=self.current,
            not_ready=self.not_ready_reasons,
        )
        self.api = FailoverApi(self)
        self.adoption = PeerAdoption(
            region=self.region,
            store=self.require_store,
            current=self.current,
            apply=self.apply,
            snapshot_seen=lambda: self._snapshot_seen,
            note_problem=self._note_problem,
            clear_problem=lambda tier: self._problems.pop(tier, None),
        )
        self.gate = WriteGate(
            region=self.region,
            config=ctx.config,
            clock=ctx.clock,
            state=self.current,
            store=lambda: self.store,
            not_ready=self.not_ready_reasons,
            loaded_epoch=self._loaded_epochs.get,
            unconfirmed_peers=self.peers.unconfirmed,
        )

    # --- interface for replication and fencing ------------------------------------

    def current(self, tier: str) -> TierState | None:
        """The latest known state of ``tier`` (``None`` for hot or before the first snapshot)."""
        return self._states.get(tier)

    def epoch(self, tier: str) -> int:
        """The current fencing epoch of ``tier``; 0 while unknown (and always for hot)."""
        state = self._states.get(tier)
        return state.epoch if state is not None else 0

    def is_primary(self, tier: str, region: str | None = None) -> bool:
        """Whether ``region`` (default: this one) is the primary of ``tier`` now.

        False while the component is not ready (no snapshot yet; with the file
        store, peers not yet compared), so a rejoining old primary never seals
        on the strength of its stale local state. For this region it is also
        False while :meth:`write_refusal` names a reason. Always False for hot.
        """
        state = self._states.get(tier)
        if state is None or self.not_ready_reasons():
            return False
        if region in (None, self.region) and self.write_refusal(tier) is not None:
            return False
        return state.primary == (region or self.region)

    def write_refusal(self, tier: str) -> str | None:
        """Why this region may not act as ``tier``'s primary (seal) now; ``None`` when it may.

        The text starts with the reason of :meth:`write_refusal_reason`.
        ``None`` for a tier this region does not hold as primary: the storage
        fence refuses those writes.
        """
        refusal = self.write_refusal_reason(tier)
        return None if refusal is None else f"{refusal[0]}: {refusal[1]}"

    def write_refusal_reason(self, tier: str) -> Refusal | None:
        """``(reason, detail)`` when this region holds ``tier`` as primary but may not write it.

        The rules and their order are :meth:`WriteGate.reason`'s.
        """
        return self.gate.reason(tier)

    def write_refusals(self) -> dict[str, str]:
        """Tier → :meth:`write_refusal` for every tier this region holds but may not write."""
        found = {tier: self.write_refusal(tier) for tier in sorted(self._states)}
        return {tier: text for tier, text in found.items() if text is not None}

    def lease_refusal(self, tier: str) -> Refusal | None:
        """etcd: see :meth:`WriteGate.lease_refusal` (the storage write permit calls this)."""
        return self.gate.lease_refusal(tier)

    def add_listener(self, callback: Listener) -> Callable[[], None]:
        """Call ``callback(new, old)`` after every change of a tier's cached state.

        Runs synchronously on the event loop, in registration order, after the
        persistent fence was advanced; it must not block (to do async work,
        hand off to your own supervised worker through a queue or event).
        Exceptions are logged and swallowed. Returns a function that removes
        the listener.
        """
        self._listeners.append(callback)

        def remove() -> None:
            if callback in self._listeners:
                self._listeners.remove(callback)

        return remove

    async def wait_for_change(self, tier: str, *, newer_than: int) -> TierState:
        """Wait until ``tier``'s epoch exceeds ``newer_than``; return that state."""
        while True:
            state = self._states.get(tier)
            if state is not None and state.epoch > newer_than:
                return state
            await self._changed.wait()

    def peer_health(self) -> dict[str, PeerHealth]:
        """Per peer: up/down, last success, current failure streak (a copy)."""
        return self.peers.health()

    def report_peer(self, peer: str, ok: bool, error: str | None = None) -> None:
        """Record a success or failure talking to ``peer`` (probes, pulls, notifies)."""
        self.peers.report(peer, ok, error)

    # --- Component protocol ---------------------------------------------------------

    def routes(self) -> Sequence[web.RouteDef]:
        return self.api.routes()

    async def start(self) -> None:
        """Open the store, load roles and (file store) compare epochs with peers once.

        The first load runs inline, bounded by :data:`FIRST_LOAD_TIMEOUT`, so a
        daemon that says READY already knows its roles. If the store is not
        reachable in time, start still succeeds: the daemon stays not-ready and
        the ``failover:state`` worker keeps trying.
        """
        self.store = open_state_store(self.ctx.config, clock=self.ctx.clock, session=self.ctx.http)
        # Every seal and commit under this root asks lease_refusal() at its commit point.
        self._remove_permit = install_write_permit(self.ctx.config.storage.root, self.lease_refusal)
        try:
            await asyncio.wait_for(self._first_load(), timeout=FIRST_LOAD_TIMEOUT)
        except (StateStoreError, TimeoutError) as exc:
            log.warning("failover_state_not_loaded_at_start", error=describe(exc))
        sup, state_cfg = self.ctx.supervisor, self.ctx.config.state
        store = self.store
        sup.spawn("failover:state", self._owned(self._follow_store))
        sup.spawn(
            "failover:heartbeat",
            self._owned(lambda: run_heartbeats(store, self.region, state_cfg.lease_ttl / 3)),
        )
        sup.spawn("failover:peers", self._owned(lambda: self.peers.run(self._status_handler())))
        if state_cfg.auto_failover:
            sup.spawn("failover:auto", self._owned(self._auto_failover))

    async def stop(self) -> None:
        # Our workers use the store: end them before closing it, so shutdown does
        # not log a burst of "store closed" retries.
        tasks = set(self._worker_tasks)
        for task in tasks:
            task.cancel("failover component stopping")
        if tasks:
            await asyncio.wait(tasks, timeout=self.ctx.config.admin.shutdown_timeout)
        if self._remove_permit is not None:
            self._remove_permit()
            self._remove_permit = None
        if self.store is not None:
            await self.store.close()

    def reload(self, new_config: Config) -> ReloadResult:
        """Nothing live: the store, peer monitor and fence are built from these at start."""
        old = self.ctx.config
        return ReloadResult(
            needs_restart=changed_sections(old, new_config, "state", "peers", "replication")
        )

    def not_ready_reasons(self) -> list[str]:
        reasons = []
        if not self._snapshot_seen:
            backend = self.ctx.config.state.backend
            reasons.append(f"failover: no snapshot yet from the {backend} state store")
        elif self.ctx.config.state.backend == "file" and not self.peers.first_round_done:
            reasons.append("failover: first comparison of epochs with peers not finished")
        return reasons

    def status(self, *, tier: str | None, region: str | None) -> dict[str, Any]:
        tiers: dict[str, Any] = {}
        for name, state in sorted(self._states.items()):
            if tier is not None and name != tier:
                continue
            regions = (
                [region]
                if region is not None
                else sorted({*self.ctx.config.regions, state.primary})
            )
            fence = self.fence.fences.get(name)
            refusal = self.write_refusal_reason(name)
            tiers[name] = {
                "primary": state.primary,
                "epoch": state.epoch,
                "role": state.role_of(self.region),
                "roles": {r: state.role_of(r) for r in regions},
                "updated_at": format_rfc3339(state.updated_at),
                "history": [t.to_json() for t in state.history[-STATUS_HISTORY:]],
                "state_problem": self._problems.get(name) or self.fence.problems.get(name),
                "fence": fence.to_json() if fence is not None else None,
                "write_refusal": f"{refusal[0]}: {refusal[1]}" if refusal else None,
                "write_refusal_reason": refusal[0] if refusal else None,
                "auto_failover": self.auto.status(name),
            }
        cfg = self.ctx.config.state
        return {
            "tiers": tiers,
            "state_backend": cfg.backend,
            "peers_health": self.peers.status(region),
            "failover": {
                "ready": not self.not_ready_reasons(),
                "auto_failover": cfg.auto_failover,
                "auto_failover_min_interval_seconds": cfg.auto_failover_min_interval,
                "lease_ttl_seconds": cfg.lease_ttl,
                "lease_safety_margin_seconds": cfg.write_safety_margin(),
                "alive_regions": sorted(self._alive) if cfg.backend == "etcd" else None,
            },
        }

    # --- state: cache, fence, listeners ---------------------------------------------

    def require_store(self) -> StateStore:
        if self.store is None:
            raise StateStoreError("failover component not started")
        return self.store

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        self._alive = snapshot.alive
        self._ever_alive |= snapshot.alive
        if self.ctx.config.state.backend == "etcd":
            self.peers.set_alive_in_store(snapshot.alive)
        for state in snapshot.tiers.values():
            self.apply(state)
        self._snapshot_seen = True

    def apply(self, state: TierState) -> None:
        """Cache ``state`` unless an equal or newer epoch is cached; fence, metrics, listeners.

        The fence is advanced first (it refuses lower epochs itself), so a
        listener that reacts to the new state already finds storage fenced.
        """
        old = self._states.get(state.tier)
        if old is not None and (state.epoch < old.epoch or state == old):
            return
        self._loaded_epochs.setdefault(state.tier, state.epoch)
        self._states[state.tier] = state
        self.fence.record(state)
        export_role_metrics(self.ctx.metrics, state, self.ctx.config.regions)
        if old is None or old.primary != state.primary:
            log.info(
                "tier_role",
                tier=state.tier,
                primary=state.primary,
                epoch=state.epoch,
                role=state.role_of(self.region),
            )
        for listener in list(self._listeners):
            try:
                listener(state, old)
            except Exception:
                log.error("failover listener failed", tier=state.tier, exc_info=True)
        self._changed.set()
        self._changed = asyncio.Event()

    async def adopt(self, remote: TierState, *, source: str) -> bool:
        """File store: replay ``remote``'s newer transitions locally (see :class:`PeerAdoption`)."""
        return await self.adoption.adopt(remote, source=source)

    # --- workers --------------------------------------------------------------------

    def _owned(self, factory: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        """Wrap a worker so :meth:`stop` can end it before the store closes."""

        async def run() -> None:
            task = asyncio.current_task()
            if task is None:  # not reachable: the supervisor runs workers as tasks
                return await factory()
            self._worker_tasks.add(task)
            try:
                await factory()
            finally:
                self._worker_tasks.discard(task)

        return run

    async def _follow_store(self) -> None:
        """Seed tiers from config, then apply every snapshot from ``store.changes()``.

        Error handling: a store failure while seeding raises, and the supervisor
        restarts this worker with backoff (the daemon stays not-ready meanwhile);
        ``changes()`` retries transient failures itself.
        """
        store = self.require_store()
        if not self._snapshot_seen:
            await self._seed(store)
        async with contextlib.aclosing(store.changes()) as snapshots:
            async for snapshot in snapshots:
                self.apply_snapshot(snapshot)

    async def _first_load(self) -> None:
        store = self.require_store()
        await self._seed(store)
        # Beat once now so that "ready" implies "alive in the store" for peers.
        await store.heartbeat(self.region)
        self.apply_snapshot(await store.snapshot())
        if self.ctx.config.state.backend == "file":
            await self.peers.probe_round(self._status_handler())

    async def _seed(self, store: StateStore) -> None:
        """Initialise warm/cold from the config rules; the stored primary wins (warned)."""
        for tier in ACTIVE_PASSIVE_TIERS:
            primary = self.ctx.config.bootstrap_primary(tier)
            if primary is None:  # no rule names this tier: it is not replicated here
                continue
            stored = await store.initialise(tier, primary)
            if stored.primary != primary:
                log.warning(
                    "stored_primary_differs_from_config",
                    tier=tier,
                    stored=stored.primary,
                    epoch=stored.epoch,
                    config=primary,
                )

    def _status_handler(self) -> StatusHandler | None:
        """File store only: learn newer epochs from each probed peer's ``/v1/status``."""
        if self.ctx.config.state.backend != "file":
            return None
        return self.adoption.learn_from_status

    def _note_problem(self, tier: str, problem: str) -> None:
        if self._problems.get(tier) != problem:
            log.error("failover_state_problem", tier=tier, problem=problem)
        self._problems[tier] = problem

    async def _auto_failover(self) -> None:
        """etcd only: promote this region when the primary's lease is gone long enough.

        Every ``lease_ttl / 4`` seconds, :meth:`check_auto_failover`. The
        guards and their reason codes are in :mod:`cryptorun_daemon.failover.auto`
        (and docs/FAILOVER.md).

        Error handling: a lost CAS is a decision (``lost_race``), not an
        error; a store failure raises and the supervisor restarts the worker.
        """
        cfg = self.ctx.config.state
        while True:
            await asyncio.sleep(max(0.2, cfg.lease_ttl / 4))
            await self.check_auto_failover()

    async def check_auto_failover(self) -> None:
        """One round of automatic failover over every known tier.

        Each tier's outcome (which guard held, or the promotion) is recorded
        in :attr:`auto` (logged once per change of reason, shown in
        ``/v1/status``). When every guard passes this region promotes itself
        with ``expected_epoch`` = the epoch it saw, so if regions race, the
        CAS lets exactly one win.
        """
        for state in list(self._states.values()):
            now = self.ctx.clock.now()
            decision = self.auto.check(
                state,
                alive=self._alive,
                ever_alive=self._ever_alive,
                now=now,
                monotonic=self.ctx.clock.monotonic(),
            )
            if decision.decision != "promote":
                continue
            tier = state.tier
            log.warning("auto_failover", tier=tier, demote=state.primary, epoch=state.epoch)
            try:
                after = await self.require_store().promote(
                    tier, self.region, state.primary, state.epoch
                )
            except ConflictError as exc:
                log.info("auto_failover_lost", tier=tier, detail=str(exc))
                lost = AutoDecision("lost", "lost_race", f"another region won the CAS: {exc}")
                self.auto.record(tier, lost, now=now)
                continue
            self.apply(after)
            await self.peers.notify(after, [])
