"""The failover subsystem as a daemon component: roles, epochs, peer health, failover API.

What it does for the daemon:

- opens the state store (``[state] backend``), seeds warm/cold from the config
  rules (``initialise`` is idempotent: a stored primary wins over config, with a
  warning), keeps this region's heartbeat, and follows ``store.changes()`` into
  an in-memory cache and the ``cryptorun_region_role`` /
  ``cryptorun_failover_epoch`` gauges;
- probes every peer's ``/healthz`` (``cryptorun_peer_up{peer}``; a peer is
  *down* after ``replication.peer_down_after`` without a success);
- serves ``POST /v1/failover`` and the peer endpoint ``POST /v1/failover/notify``.

Interface for replication and fencing (stable; other components find this one
as ``ctx.components["failover"]``):

- :meth:`FailoverComponent.current` / :meth:`~FailoverComponent.epoch` /
  :meth:`~FailoverComponent.is_primary` read the cache (no I/O, never block);
- :meth:`~FailoverComponent.add_listener` registers a synchronous callback run
  on the event loop after every change; :meth:`~FailoverComponent.wait_for_change`
  awaits a newer epoch;
- :meth:`~FailoverComponent.peer_health` and :meth:`~FailoverComponent.report_peer`
  (failed pulls count as failed probes).

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
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Final

import aiohttp
import structlog
from aiohttp import web

from cryptorun_daemon.admin.errors import json_error
from cryptorun_daemon.errors import ConflictError, StateStoreError, UsageError
from cryptorun_daemon.failover.roles import (
    ACTIVE_PASSIVE_TIERS,
    Snapshot,
    TierState,
    Transition,
    export_role_metrics,
    format_rfc3339,
    is_active_passive,
    parse_rfc3339,
    require_active_passive,
)
from cryptorun_daemon.failover.store import StateStore, open_state_store, run_heartbeats
from cryptorun_daemon.runtime.component import DaemonContext

log = structlog.get_logger("cryptorun.failover")

#: Called on the event loop after the cached state of a tier changed: ``(new, old)``.
Listener = Callable[[TierState, TierState | None], None]

# Peer calls made while an operator waits (status views, notify) or by the prober:
# short, so a black-holed peer costs seconds, not the 30 s replication timeout.
PEER_CALL_TIMEOUT: Final = 2.0
PROBE_INTERVAL_MAX: Final = 2.0
FIRST_LOAD_TIMEOUT: Final = 8.0
STATUS_HISTORY: Final = 10  # transitions shown in /v1/status (enough to replay a rejoin)


@dataclass(frozen=True)
class PeerHealth:
    """What this region knows about one peer.

    ``reachable`` is the last probe's answer (``None`` before the first);
    ``up`` is false once ``peer_down_after`` passed without a success (counted
    from the start of probing for a peer never reached). ``down_since`` is the
    first failure of the current failure streak, set while down.
    ``alive_in_store`` is the peer's etcd lease (``None`` with the file store).
    """

    peer: str
    url: str
    up: bool = True
    reachable: bool | None = None
    last_ok: datetime | None = None
    last_probe: datetime | None = None
    failing_since: datetime | None = None
    down_since: datetime | None = None
    last_error: str | None = None
    alive_in_store: bool | None = None

    def to_json(self) -> dict[str, Any]:
        def fmt(moment: datetime | None) -> str | None:
            return format_rfc3339(moment) if moment is not None else None

        return {
            "url": self.url,
            "up": self.up,
            "reachable": self.reachable,
            "last_ok": fmt(self.last_ok),
            "last_probe": fmt(self.last_probe),
            "down_since": fmt(self.down_since),
            "last_error": self.last_error,
            "alive_in_store": self.alive_in_store,
        }


@dataclass(frozen=True)
class FailoverRequest:
    """A validated ``POST /v1/failover`` body."""

    tier: str
    promote: str
    demote: str
    dry_run: bool
    expected_epoch: int | None

    @classmethod
    def parse(cls, body: dict[str, Any], known: Sequence[str]) -> FailoverRequest:
        """Error handling: :class:`UsageError` (400) naming the first bad field."""
        unknown = sorted(set(body) - {"tier", "promote", "demote", "dry_run", "expected_epoch"})
        if unknown:
            raise UsageError(f"unknown field(s) {', '.join(unknown)} in failover request")
        tier = require_active_passive(_string(body, "tier"))
        names: dict[str, str] = {}
        for key in ("promote", "demote"):
            names[key] = _string(body, key)
            if names[key] not in known:
                raise UsageError(f"{key}: region {names[key]!r} is unknown (known: "
                                 f"{', '.join(known)})")
        if names["promote"] == names["demote"]:
            raise UsageError(f"promote and demote are both {names['promote']!r}")
        dry_run = body.get("dry_run", False)
        if not isinstance(dry_run, bool):
            raise UsageError("dry_run must be true or false")
        expected = body.get("expected_epoch")
        if expected is not None and (isinstance(expected, bool) or not isinstance(expected, int)
                                     or expected < 1):
            raise UsageError("expected_epoch must be an integer >= 1")
        return cls(tier, names["promote"], names["demote"], dry_run, expected)


class FailoverComponent:
    """Roles, epochs and peer health for one region; the failover API.

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
        self._alive: frozenset[str] = frozenset()
        self._ever_alive: set[str] = set()
        self._snapshot_seen = False
        self._peers_compared = False
        self._listeners: list[Listener] = []
        self._changed = asyncio.Event()
        self._adopt_lock = asyncio.Lock()
        self._problems: dict[str, str] = {}
        self._worker_tasks: set[asyncio.Task[Any]] = set()
        self._probe_started = ctx.clock.monotonic()
        self._last_ok_mono: dict[str, float] = {}
        self._health = {p: PeerHealth(p, url) for p, url in sorted(ctx.config.peers.items())}
        down_after = ctx.config.replication.peer_down_after
        self.probe_interval = max(0.2, min(PROBE_INTERVAL_MAX, down_after / 3))
        self._auto_absent_since: dict[str, float] = {}

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
        on the strength of its stale local state. Always False for hot.
        """
        state = self._states.get(tier)
        if state is None or self.not_ready_reasons():
            return False
        return state.primary == (region or self.region)

    def add_listener(self, callback: Listener) -> Callable[[], None]:
        """Call ``callback(new, old)`` after every change of a tier's cached state.

        Runs synchronously on the event loop, in registration order; it must not
        block (to do async work, hand off to your own supervised worker through
        a queue or event). Exceptions are logged and swallowed. Returns a
        function that removes the listener.
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
        return dict(self._health)

    def report_peer(self, peer: str, ok: bool, error: str | None = None) -> None:
        """Record a success or failure talking to ``peer`` (probes, pulls, notifies)."""
        old = self._health.get(peer)
        if old is None:
            return
        now, mono = self.ctx.clock.now(), self.ctx.clock.monotonic()
        if ok:
            self._last_ok_mono[peer] = mono
            new = replace(old, up=True, reachable=True, last_ok=now, last_probe=now,
                          failing_since=None, down_since=None, last_error=None)
        else:
            since = self._last_ok_mono.get(peer, self._probe_started)
            up = mono - since < self.ctx.config.replication.peer_down_after
            failing = old.failing_since or now
            new = replace(old, up=up, reachable=False, last_probe=now, failing_since=failing,
                          down_since=None if up else (old.down_since or failing),
                          last_error=error)
            if old.up and not up:
                log.warning("peer_down", peer=peer, last_ok=old.last_ok, error=error)
        if new.up and not old.up:
            log.info("peer_up_again", peer=peer)
        self._health[peer] = new
        self.ctx.metrics.peer_up.labels(peer=peer).set(1 if new.reachable else 0)

    # --- Component protocol ---------------------------------------------------------

    def routes(self) -> Sequence[web.RouteDef]:
        return [
            web.post("/v1/failover", self.handle_failover),
            web.post("/v1/failover/notify", self.handle_notify),
        ]

    async def start(self) -> None:
        """Open the store, load roles and (file store) compare epochs with peers once.

        The first load runs inline, bounded by :data:`FIRST_LOAD_TIMEOUT`, so a
        daemon that says READY already knows its roles. If the store is not
        reachable in time, start still succeeds: the daemon stays not-ready and
        the ``failover:state`` worker keeps trying.
        """
        self.store = open_state_store(self.ctx.config, clock=self.ctx.clock, session=self.ctx.http)
        try:
            await asyncio.wait_for(self._first_load(), timeout=FIRST_LOAD_TIMEOUT)
        except (StateStoreError, TimeoutError) as exc:
            log.warning("failover_state_not_loaded_at_start", error=_describe(exc))
        sup, state_cfg = self.ctx.supervisor, self.ctx.config.state
        store = self.store
        sup.spawn("failover:state", self._owned(self._follow_store))
        sup.spawn("failover:heartbeat", self._owned(
            lambda: run_heartbeats(store, self.region, state_cfg.lease_ttl / 3)))
        sup.spawn("failover:peers", self._owned(self._probe_peers))
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
        if self.store is not None:
            await self.store.close()

    def not_ready_reasons(self) -> list[str]:
        reasons = []
        if not self._snapshot_seen:
            backend = self.ctx.config.state.backend
            reasons.append(f"failover: no snapshot yet from the {backend} state store")
        elif self.ctx.config.state.backend == "file" and not self._peers_compared:
            reasons.append("failover: first comparison of epochs with peers not finished")
        return reasons

    def status(self, *, tier: str | None, region: str | None) -> dict[str, Any]:
        tiers: dict[str, Any] = {}
        for name, state in sorted(self._states.items()):
            if tier is not None and name != tier:
                continue
            regions = [region] if region is not None else sorted(
                {*self.ctx.config.regions, state.primary})
            tiers[name] = {
                "primary": state.primary,
                "epoch": state.epoch,
                "role": state.role_of(self.region),
                "roles": {r: state.role_of(r) for r in regions},
                "updated_at": format_rfc3339(state.updated_at),
                "history": [t.to_json() for t in state.history[-STATUS_HISTORY:]],
                "state_problem": self._problems.get(name),
            }
        health = {p: h.to_json() for p, h in self._health.items()
                  if region is None or region in (p, self.region)}
        cfg = self.ctx.config.state
        return {
            "tiers": tiers,
            "state_backend": cfg.backend,
            "peers_health": health,
            "failover": {
                "ready": not self.not_ready_reasons(),
                "auto_failover": cfg.auto_failover,
                "auto_failover_min_interval_seconds": cfg.auto_failover_min_interval,
                "lease_ttl_seconds": cfg.lease_ttl,
                "alive_regions": sorted(self._alive) if cfg.backend == "etcd" else None,
            },
        }

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

    def _require_store(self) -> StateStore:
        if self.store is None:
            raise StateStoreError("failover component not started")
        return self.store

    async def _follow_store(self) -> None:
        """Seed tiers from config, then apply every snapshot from ``store.changes()``.

        Error handling: a store failure while seeding raises, and the supervisor
        restarts this worker with backoff (the daemon stays not-ready meanwhile);
        ``changes()`` retries transient failures itself.
        """
        store = self._require_store()
        if not self._snapshot_seen:
            await self._seed(store)
        async with contextlib.aclosing(store.changes()) as snapshots:
            async for snapshot in snapshots:
                self._apply_snapshot(snapshot)

    async def _first_load(self) -> None:
        store = self._require_store()
        await self._seed(store)
        # Beat once now so that "ready" implies "alive in the store" for peers.
        await store.heartbeat(self.region)
        self._apply_snapshot(await store.snapshot())
        if self.ctx.config.state.backend == "file":
            await self._probe_round()

    async def _seed(self, store: StateStore) -> None:
        """Initialise warm/cold from the config rules; the stored primary wins (warned)."""
        for tier, primary in _configured_primaries(self.ctx.config.rules).items():
            stored = await store.initialise(tier, primary)
            if stored.primary != primary:
                log.warning("stored_primary_differs_from_config", tier=tier,
                            stored=stored.primary, epoch=stored.epoch, config=primary)

    def _apply_snapshot(self, snapshot: Snapshot) -> None:
        self._alive = snapshot.alive
        self._ever_alive |= snapshot.alive
        if self.ctx.config.state.backend == "etcd":
            for peer, health in self._health.items():
                self._health[peer] = replace(health, alive_in_store=peer in snapshot.alive)
        for state in snapshot.tiers.values():
            self._apply(state)
        self._snapshot_seen = True

    def _apply(self, state: TierState) -> None:
        """Cache ``state`` unless an equal or newer epoch is cached; export metrics; notify."""
        old = self._states.get(state.tier)
        if old is not None and (state.epoch < old.epoch or state == old):
            return
        self._states[state.tier] = state
        export_role_metrics(self.ctx.metrics, state, self.ctx.config.regions)
        if old is None or old.primary != state.primary:
            log.info("tier_role", tier=state.tier, primary=state.primary, epoch=state.epoch,
                     role=state.role_of(self.region))
        for listener in list(self._listeners):
            try:
                listener(state, old)
            except Exception:
                log.error("failover listener failed", tier=state.tier, exc_info=True)
        self._changed.set()
        self._changed = asyncio.Event()

    async def _probe_peers(self) -> None:
        """Probe every peer's ``/healthz`` forever; with the file store also learn epochs.

        Error handling: a failed probe is recorded, never raised; a divergent
        peer state is logged and shown as ``state_problem`` in status.
        """
        while True:
            await self._probe_round()
            await asyncio.sleep(self.probe_interval)

    async def _probe_round(self) -> None:
        await asyncio.gather(*(self._probe(p) for p in self._health))
        self._peers_compared = True

    async def _probe(self, peer: str) -> None:
        url = self.ctx.config.peers[peer]
        try:
            await self._peer_get(f"{url}/healthz")
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self.report_peer(peer, False, _describe(exc))
            return
        self.report_peer(peer, True)
        if self.ctx.config.state.backend != "file" or not self._snapshot_seen:
            return
        try:
            doc = await self._peer_get(f"{url}/v1/status")
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return  # healthz answered; status may be briefly unavailable
        for tier in ACTIVE_PASSIVE_TIERS:
            remote = _state_from_status(doc, tier)
            local = self._states.get(tier)
            if remote is None or local is None or remote.epoch < local.epoch or (
                    remote.epoch == local.epoch and remote.primary == local.primary):
                continue
            try:
                await self._adopt(remote, source=peer)
            except (ConflictError, StateStoreError) as exc:
                self._note_problem(tier, f"cannot adopt {peer}'s state: {exc}")

    async def _auto_failover(self) -> None:
        """etcd only: promote this region when the primary's lease is gone long enough.

        Guards: this daemon has seen the primary alive since it started (so a
        cluster restart where the primary is merely slow to come up never
        triggers it); the primary has been absent from the alive set (its lease
        expired) for a further ``lease_ttl`` as seen here; this region holds its
        own lease; the tier's last transition is older than
        ``auto_failover_min_interval``; and this region is the first alive
        candidate in sorted order, so regions do not race (if they do, the CAS
        lets exactly one win).
        """
        cfg = self.ctx.config.state
        while True:
            await asyncio.sleep(max(0.2, cfg.lease_ttl / 4))
            mono = self.ctx.clock.monotonic()
            for tier, state in list(self._states.items()):
                if (state.primary in self._alive or state.primary not in self._ever_alive
                        or self.region not in self._alive):
                    self._auto_absent_since.pop(tier, None)
                    continue
                since = self._auto_absent_since.setdefault(tier, mono)
                age = (self.ctx.clock.now() - state.updated_at).total_seconds()
                candidates = sorted(self._alive - {state.primary})
                if (mono - since < cfg.lease_ttl or age < cfg.auto_failover_min_interval
                        or not candidates or candidates[0] != self.region):
                    continue
                log.warning("auto_failover", tier=tier, demote=state.primary, epoch=state.epoch)
                try:
                    after = await self._require_store().promote(
                        tier, self.region, state.primary, state.epoch)
                except ConflictError as exc:
                    log.info("auto_failover_lost", tier=tier, detail=str(exc))
                    continue
                self._apply(after)
                await self._notify_peers(after, [])

    # --- handlers -------------------------------------------------------------------

    async def handle_failover(self, request: web.Request) -> web.Response:
        """``POST /v1/failover``: validate, persist the new epoch, tell peers, report.

        Order: parse (400) → read the tier from the store → gather each
        region's view (epoch, lag) → promote in the store (409 on conflict; the
        new epoch is durable here) → update the cache and metrics → notify
        peers (failures become warnings) → answer. A dry run stops before the
        store write and sends nothing.
        """
        req = FailoverRequest.parse(await _json_object(request), self.ctx.config.regions)
        reasons = self.not_ready_reasons()
        if reasons:
            return json_error(503, "not_ready", "; ".join(reasons))
        store = self._require_store()
        try:
            before = await store.get(req.tier)
            views = await self._region_views(req.tier)
            if req.dry_run:
                after = before.promoted(req.promote, req.demote,
                                        expected_epoch=req.expected_epoch, at=self.ctx.clock.now())
            else:
                after = await store.promote(req.tier, req.promote, req.demote,
                                            req.expected_epoch)
        except StateStoreError as exc:
            return json_error(503, "state_store", str(exc))
        previous = after.history[-1].demoted if after.history else before.primary
        warnings = self._preflight_warnings(req, views)
        acked: dict[str, int | None] = {}
        if not req.dry_run:
            self._apply(after)
            log.warning("failover", tier=req.tier, promoted=after.primary,
                        demoted=previous, epoch=after.epoch)
            acked = await self._notify_peers(after, warnings)
        after_views = {r: dict(v, epoch=acked.get(r, v.get("epoch"))) for r, v in views.items()}
        if not req.dry_run:
            after_views[self.region]["epoch"] = after.epoch
        candidate = views.get(req.promote, {})
        return web.json_response({
            "tier": req.tier,
            "epoch": after.epoch,
            "primary": after.primary,
            "previous_primary": previous,
            "dry_run": req.dry_run,
            "state_backend": store.backend,
            "candidate_lag_seconds": candidate.get("lag_seconds"),
            "actions": self._actions(req, before, after, acked),
            "warnings": warnings,
            "before": _topology(before, views),
            "after": _topology(after, after_views),
        })

    async def handle_notify(self, request: web.Request) -> web.Response:
        """``POST /v1/failover/notify`` ``{"from", "state"}``: a peer changed a tier.

        etcd: re-read the shared store now. File: adopt the carried state if
        its epoch is higher (replaying its transitions); 409 when it diverges.
        """
        body = await _json_object(request)
        try:
            remote = TierState.from_json(body.get("state"))
        except StateStoreError as exc:
            raise UsageError(f"state: {exc}") from None
        sender = body.get("from")
        store = self._require_store()
        try:
            if store.backend == "file":
                applied = await self._adopt(remote, source=str(sender))
            else:
                self._apply_snapshot(await store.snapshot())
                applied = False
        except StateStoreError as exc:
            return json_error(503, "state_store", str(exc))
        local = self._states.get(remote.tier)
        return web.json_response({
            "region": self.region,
            "tier": remote.tier,
            "applied": applied,
            "epoch": local.epoch if local else None,
            "primary": local.primary if local else None,
        })

    # --- helpers --------------------------------------------------------------------

    async def _adopt(self, remote: TierState, *, source: str) -> bool:
        """File store: replay ``remote``'s newer transitions locally; True when applied.

        Error handling: :class:`ConflictError` when the states diverge (same
        epoch, other primary; or a gap in the carried history).
        """
        store = self._require_store()
        async with self._adopt_lock:
            local = await store.get(remote.tier)
            if remote.epoch <= local.epoch:
                if remote.epoch == local.epoch and remote.primary != local.primary:
                    raise ConflictError(
                        f"tier {remote.tier}: divergent state at epoch {local.epoch}: "
                        f"{source} says primary {remote.primary}, {self.region} says "
                        f"{local.primary}; reconcile by hand (docs/FAILOVER.md)")
                return False
            missing = [t for t in remote.history if t.epoch > local.epoch]
            if [t.epoch for t in missing] != list(range(local.epoch + 1, remote.epoch + 1)):
                raise ConflictError(
                    f"tier {remote.tier}: cannot replay epochs {local.epoch + 1}..{remote.epoch} "
                    f"from {source}: its history does not cover them")
            for transition in missing:
                if transition.demoted is None:
                    raise ConflictError(f"tier {remote.tier}: {source}'s history has a "
                                        f"bootstrap at epoch {transition.epoch}")
                local = await store.promote(remote.tier, transition.promoted,
                                            transition.demoted, transition.epoch - 1)
            log.warning("adopted_peer_state", tier=remote.tier, source=source,
                        primary=local.primary, epoch=local.epoch)
        self._problems.pop(remote.tier, None)
        self._apply(local)
        return True

    def _note_problem(self, tier: str, problem: str) -> None:
        if self._problems.get(tier) != problem:
            log.error("failover_state_problem", tier=tier, problem=problem)
        self._problems[tier] = problem

    async def _peer_get(self, url: str) -> Any:
        http = self.ctx.http
        if http is None:
            raise aiohttp.ClientError("daemon HTTP session not open")
        timeout = aiohttp.ClientTimeout(total=PEER_CALL_TIMEOUT)
        async with http.get(url, timeout=timeout, headers=self.ctx.peer_headers()) as resp:
            if resp.status != 200:
                raise aiohttp.ClientError(f"{url} answered {resp.status}")
            return await resp.json(content_type=None)

    async def _region_views(self, tier: str) -> dict[str, dict[str, Any]]:
        """Each region's own view of ``tier``: epoch, lag to its source, last success, up."""
        views = {self.region: _view_from_status(self._own_status(tier), tier, reachable=True)}

        async def fetch(peer: str, url: str) -> None:
            try:
                doc = await self._peer_get(f"{url}/v1/status?tier={tier}")
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                self.report_peer(peer, False, _describe(exc))
                views[peer] = {"epoch": None, "lag_seconds": None, "last_success": None,
                               "reachable": False, "error": _describe(exc)}
                return
            self.report_peer(peer, True)
            views[peer] = _view_from_status(doc, tier, reachable=True)

        await asyncio.gather(*(fetch(p, u) for p, u in self.ctx.config.peers.items()))
        return views

    def _own_status(self, tier: str) -> dict[str, Any]:
        """This daemon's status for ``tier`` as peers see it (own part + replication's)."""
        doc: dict[str, Any] = {"tiers": {}}
        for component in (self, self.ctx.components.get("warm_cold")):
            if component is not None:
                _merge(doc, component.status(tier=tier, region=None))
        return doc

    def _preflight_warnings(self, req: FailoverRequest,
                            views: dict[str, dict[str, Any]]) -> list[str]:
        warnings = []
        if not views.get(req.demote, {}).get("reachable", True):
            warnings.append(f"demoted region {req.demote} is unreachable: it is fenced by the new "
                            "epoch and learns it when it rejoins")
        candidate = views.get(req.promote, {})
        if not candidate.get("reachable", True):
            warnings.append(f"promoted region {req.promote} is unreachable now: it takes over "
                            "when it learns the new epoch")
        lag, slo = candidate.get("lag_seconds"), candidate.get("lag_slo_seconds")
        if lag is None:
            warnings.append(f"lag of {req.promote} unknown: partitions it has not replicated are "
                            "pulled from the old primary on rejoin")
        elif slo is not None and lag > slo:
            warnings.append(f"{req.promote} lags {lag:.1f}s behind {req.demote} (SLO {slo:g}s)")
        return warnings

    async def _notify_peers(self, state: TierState, warnings: list[str]) -> dict[str, int | None]:
        """POST the new state to every peer; returns the epoch each acknowledged."""
        acked: dict[str, int | None] = {}
        http = self.ctx.http
        timeout = aiohttp.ClientTimeout(total=PEER_CALL_TIMEOUT)
        body = {"from": self.region, "state": state.to_json()}

        async def notify(peer: str, url: str) -> None:
            try:
                if http is None:
                    raise aiohttp.ClientError("daemon HTTP session not open")
                async with http.post(f"{url}/v1/failover/notify", json=body, timeout=timeout,
                                     headers=self.ctx.peer_headers()) as resp:
                    reply = await resp.json(content_type=None)
                    if resp.status != 200:
                        detail = reply.get("detail") if isinstance(reply, dict) else reply
                        warnings.append(f"peer {peer} refused the new state ({resp.status}): "
                                        f"{detail}")
                        return
                acked[peer] = reply.get("epoch") if isinstance(reply, dict) else None
                self.report_peer(peer, True)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                self.report_peer(peer, False, _describe(exc))
                learns = ("through the etcd watch" if self.ctx.config.state.backend == "etcd"
                          else f"from {self.region}'s /v1/status when it is back")
                warnings.append(f"could not notify {peer} ({_describe(exc)}); it learns epoch "
                                f"{state.epoch} {learns}")

        await asyncio.gather(*(notify(p, u) for p, u in sorted(self.ctx.config.peers.items())))
        return acked

    def _actions(self, req: FailoverRequest, before: TierState, after: TierState,
                 acked: dict[str, int | None]) -> list[dict[str, Any]]:
        """The steps of this failover, in order; a dry run lists them as ``planned``."""
        done = "planned" if req.dry_run else "done"
        backend = self._require_store().backend
        actions = [
            {"action": "check", "status": "done",
             "detail": f"{req.demote} is primary of {req.tier} at epoch {before.epoch}; "
                       f"{req.promote} is a replica"},
            {"action": "persist_epoch", "status": done,
             "detail": f"{backend} store: {req.tier} epoch {before.epoch} -> {after.epoch}, "
                       f"primary {req.demote} -> {req.promote}"},
            {"action": "fence", "status": done,
             "detail": f"epoch {after.epoch} fences {req.demote}: {req.tier} writes and "
                       f"sources stamped with epoch <= {before.epoch} are refused"},
        ]
        for peer, url in sorted(self.ctx.config.peers.items()):
            status = done if req.dry_run or peer in acked else "failed"
            actions.append({"action": "notify", "status": status, "target": peer,
                            "detail": f"POST {url}/v1/failover/notify"})
        actions.append({"action": "rejoin", "status": "planned", "target": req.demote,
                        "detail": f"{req.demote} becomes a replica of {req.promote} when it "
                                  "learns the epoch; unreplicated partitions are reconciled"})
        return actions


# --- module helpers -------------------------------------------------------------------


def _configured_primaries(rules: Sequence[Any]) -> dict[str, str]:
    """Tier → configured primary (the ``from`` of its first active-passive rule)."""
    primaries: dict[str, str] = {}
    for rule in rules:
        if rule.mode != "active-passive" or not is_active_passive(rule.tier):
            continue
        chosen = primaries.setdefault(rule.tier, rule.from_region)
        if chosen != rule.from_region:
            log.warning("conflicting_active_passive_rules", tier=rule.tier,
                        using=chosen, ignored=rule.from_region)
    return primaries


def _state_from_status(doc: Any, tier: str) -> TierState | None:
    """A peer's tier state rebuilt from its ``/v1/status`` (``None`` when absent or bad)."""
    try:
        info = doc["tiers"][tier]
        return TierState(
            tier=require_active_passive(tier), primary=info["primary"], epoch=info["epoch"],
            updated_at=parse_rfc3339(info["updated_at"]),
            history=tuple(Transition.from_json(t) for t in info["history"]),
        )
    except (KeyError, TypeError, ValueError, StateStoreError, UsageError):
        return None


def _view_from_status(doc: Any, tier: str, *, reachable: bool) -> dict[str, Any]:
    info = doc.get("tiers", {}).get(tier, {}) if isinstance(doc, dict) else {}
    primary = info.get("primary")
    source = info.get("sources", {}).get(primary, {}) if primary else {}
    return {
        "epoch": info.get("epoch"),
        "lag_seconds": source.get("lag_seconds"),
        "lag_slo_seconds": source.get("lag_slo_seconds"),
        "last_success": source.get("last_success"),
        "reachable": reachable,
    }


def _topology(state: TierState, views: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per-region rows for a before/after table (role from ``state``, rest from views)."""
    regions = sorted({*views, state.primary})
    return {
        "primary": state.primary,
        "epoch": state.epoch,
        "updated_at": format_rfc3339(state.updated_at),
        "regions": {
            r: {"role": state.role_of(r), **views.get(r, {"reachable": None})} for r in regions
        },
    }


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise UsageError("request body must be a JSON object") from None
    if not isinstance(body, dict):
        raise UsageError("request body must be a JSON object")
    return body


def _string(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise UsageError(f"{key} is required and must be a string")
    return value


def _merge(into: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
