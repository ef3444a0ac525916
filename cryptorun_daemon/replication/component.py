"""The warm/cold replication component: serving, pulling, reconciling, lag, simulate.

Plugs into the daemon through the ``Component`` protocol. As a source it
serves its sealed partitions (``GET /v1/partitions…``, fenced: only the
current primary serves as a source). Its links follow the live topology:

- the participants of a tier are ``{from} ∪ to`` over its warm/cold rules;
- a participant that is not the tier's current primary runs one
  :class:`ReplicationLink` pulling from the primary;
- the primary pulls from nobody, but once an epoch has ended it runs one
  :class:`~cryptorun_daemon.replication.reconcile.ReconcileLink` per other
  participant, pulling the legitimate old-epoch partitions it lacks.

Each link is driven by a :class:`PassScheduler` spawned on the supervisor as
``replication:{tier}:{source}`` or ``reconcile:{tier}:{peer}``. When the
failover component reports a change (``subscribe``), the ``replication:topology``
worker first sets aside this region's divergent partitions (see
``reconcile.py``), then cancels the schedulers that no longer fit and spawns
the new ones: a failover needs no restart.

Hooks from the failover subsystem (defaults: static values from the config):
``epoch_provider(tier)`` (stamped into manifests this region computes, and
compared with a source's epoch before pulling), ``primary_provider(tier)``,
``serve_guard(tier)`` (may this region serve as a source), ``write_refusal(tier)``
(why this region may not seal yet, ``None`` when it may), ``subscribe(cb)``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from cryptorun_daemon.admin.bodies import json_object
from cryptorun_daemon.config import ACTIVE_PASSIVE_TIERS, Config, Rule, Tier, is_active_passive
from cryptorun_daemon.errors import (
    FencedError,
    PathRejectedError,
    ReplicationError,
    SealRefusedError,
    StateStoreError,
    StorageError,
    UsageError,
)
from cryptorun_daemon.replication.bucket_executor import (
    BucketMirrorExecutor,
    bucket_index,
    streams_across_endpoints,
)
from cryptorun_daemon.replication.bucket_serving import BucketHeldTiers
from cryptorun_daemon.replication.executor import WarmColdExecutor
from cryptorun_daemon.replication.feed_serving import FeedServer
from cryptorun_daemon.replication.link import CHECKS, PassReport, ReplicationLink
from cryptorun_daemon.replication.planner import (
    HEALTHY,
    Committed,
    PeerHealth,
    SourcePartition,
    committed_index,
    listed,
    plan_replication,
)
from cryptorun_daemon.replication.reconcile import (
    DivergenceWalk,
    ReconcileLink,
    ReconcileRecord,
    ReconcileSource,
    set_aside_divergent,
)
from cryptorun_daemon.replication.rules import Plan, TimeRange, parse_tier
from cryptorun_daemon.replication.scheduler import PassScheduler, interval_for_slo
from cryptorun_daemon.replication.serving import PartitionServer, ServeGuard
from cryptorun_daemon.replication.transport_http import HttpPeer, Purpose
from cryptorun_daemon.replication.verify import StepValidator
from cryptorun_daemon.runtime.component import DaemonContext, ReloadResult, changed_sections
from cryptorun_daemon.storage.bucket_source import BucketFileSource
from cryptorun_daemon.storage.catalog import Catalog, CatalogEntry
from cryptorun_daemon.storage.change_feed import feed_for
from cryptorun_daemon.storage.layout import parse_partition_path
from cryptorun_daemon.storage.manifest import DEFAULT_HASH_CACHE, Manifest
from cryptorun_daemon.storage.object_store import TierBucket
from cryptorun_daemon.storage.scrub import ScrubReport, scrub_tier
from cryptorun_daemon.storage.seal import manifest_summary, seal_partition

log = structlog.get_logger("cryptorun.replication")

#: ``(kind, tier, peer)``: kind ``pull`` (from the primary) or ``reconcile`` (from an old one).
LinkKey = tuple[str, Tier, str]
AnyLink = ReplicationLink | ReconcileLink


class WarmColdComponent:
    """Warm and cold tier replication for one region's daemon.

    Resource handling: ``start`` spawns the topology worker (which spawns one
    supervised scheduler per link) and the scrub worker, and opens a client
    session only if the daemon did not provide one; ``stop`` closes that
    session and the change feed's connection (the supervisor cancels the
    workers).
    """

    name = "warm_cold"

    def __init__(
        self,
        ctx: DaemonContext,
        *,
        validators: Sequence[StepValidator] = (),
        epoch_provider: Callable[[Tier], int] | None = None,
        primary_provider: Callable[[Tier], str | None] | None = None,
        peer_reporter: Callable[[str, bool, str | None], None] | None = None,
        serve_guard: ServeGuard | None = None,
        write_refusal: Callable[[Tier], str | None] | None = None,
        subscribe: Callable[[Callable[[], None]], object] | None = None,
    ) -> None:
        self.ctx = ctx
        config = ctx.config
        self.region = config.region
        self.root = config.storage.root
        self.validators = tuple(validators)
        self.epoch_provider: Callable[[Tier], int] = epoch_provider or (lambda _tier: 1)
        self._primary_provider = primary_provider
        self._peer_reporter = peer_reporter
        self._write_refusal = write_refusal or (lambda _tier: None)
        self.catalog = Catalog(
            self.root, metrics=ctx.metrics, hash_cache=DEFAULT_HASH_CACHE, clock=ctx.clock.now
        )
        self.feed = feed_for(self.root)
        self.feed.retention = config.replication.feed_retention
        # Tiers this region holds only in its bucket are served from it (after a failover
        # such a region is the source of its peers: replication/bucket_serving.py).
        self.bucket_held = BucketHeldTiers(
            root=self.root,
            config=config,
            metrics=ctx.metrics,
            index_of=lambda tier: bucket_index(self.root, tier),
        )
        self.feed_server = FeedServer(
            root=self.root,
            region=self.region,
            feed=self.feed,
            epoch_provider=self.epoch_provider,
            serve_guard=serve_guard,
            primary_of=self.primary_of_tier,
            bucket_held=self.bucket_held,
        )
        self.server = PartitionServer(
            root=self.root,
            region=self.region,
            catalog=self.catalog,
            epoch_provider=self.epoch_provider,
            now=ctx.clock.now,
            serve_guard=serve_guard,
            primary_of=self.primary_of_tier,
            bucket_held=self.bucket_held,
        )
        self.links: dict[LinkKey, AnyLink] = {}
        self.schedulers: dict[LinkKey, PassScheduler[Any]] = {}
        self.reconciliation: dict[Tier, ReconcileRecord] = {
            t: ReconcileRecord(t) for t in ACTIVE_PASSIVE_TIERS
        }
        # Set after the first scrub round: links compare digests only from then on.
        self._index_ready = asyncio.Event()
        # Set after the first divergence walk (in the background after start):
        # pull links start their first pass only then.
        self._divergence_checked = asyncio.Event()
        self._topology_changed = asyncio.Event()
        self._topology_changed.set()  # the first round runs at start
        self._own_session: aiohttp.ClientSession | None = None
        self._started = False
        if subscribe is not None:
            subscribe(self._topology_changed.set)

    # --- Component protocol --------------------------------------------------------

    def routes(self) -> Sequence[web.RouteDef]:
        return [
            *self.feed_server.routes(),
            *self.server.routes(),
            web.post("/v1/replication/simulate", self.handle_simulate),
            web.post("/v1/replication/sync", self.handle_sync),
            web.post("/v1/partitions/seal", self.handle_seal),
        ]

    async def start(self) -> None:
        for tier in ACTIVE_PASSIVE_TIERS:
            (self.root / tier).mkdir(parents=True, exist_ok=True)
        # The links the topology calls for exist from the start (status and
        # ``sync`` see them), but readiness never waits for the divergence walk:
        # it runs in the topology worker's first round, and pull links wait for
        # it before their first pass (``_divergence_checked``).
        await self._match_links()
        self.ctx.supervisor.spawn("replication:topology", self._follow_topology)
        self.ctx.supervisor.spawn("replication:scrub", self._scrub_forever)
        self._started = True

    async def stop(self) -> None:
        # The feed reopens on next use; closing releases its file handles now.
        await asyncio.to_thread(self.feed.close)
        for link in self.links.values():
            if isinstance(link, ReplicationLink) and link.feed is not self.feed:
                await asyncio.to_thread(link.feed.close)  # a bucket index
        if self._own_session is not None:
            await self._own_session.close()
            self._own_session = None

    def status(self, *, tier: str | None, region: str | None) -> dict[str, Any]:
        tiers: dict[str, Any] = {}
        for t in ACTIVE_PASSIVE_TIERS:
            if tier is not None and t != tier:
                continue
            sources = {
                src: link.status()
                for (kind, link_tier, src), link in sorted(self.links.items())
                if kind == "pull"
                and link_tier == t
                and (region is None or region in (src, self.region))
            }
            # Roles and epochs are the failover component's part of the document.
            tiers[t] = {"sources": sources, "reconciliation": self.reconciliation[t].to_json()}
        return {"tiers": tiers}

    def reload(self, new_config: Config) -> ReloadResult:
        """Nothing live: links, schedulers and validators are built from these at start."""
        sections = ("replication", "validation", "peers")
        return ReloadResult(needs_restart=changed_sections(self.ctx.config, new_config, *sections))

    def not_ready_reasons(self) -> list[str]:
        return [] if self._started else ["warm/cold replication not started"]

    # --- scrub ----------------------------------------------------------------------

    async def _scrub_forever(self) -> None:
        """Worker: scrub every warm/cold tier this region holds, then every ``scrub_interval``.

        The first round runs at start, so partitions written while the daemon
        was down (or by tools that bypass the feed) are in the index before
        this region's links compare digests (they wait for ``_index_ready``).

        Error handling: an exception propagates to the supervisor, which logs,
        counts and restarts this worker (the links are released anyway).
        Resource handling: each tier is scrubbed in one worker-thread call; the
        event loop only waits for it.
        """
        while True:
            try:
                for tier in self._tier_rules():
                    found = await self._scrub(tier)
                    if found.discovered or found.lost:
                        log.info(
                            "scrub recorded differences between disk and index",
                            tier=tier,
                            discovered=found.discovered,
                            lost=found.lost,
                        )
            finally:
                # Even a failed round releases the links: a broken scrub must
                # not stop replication, only make its repairs less exact.
                self._index_ready.set()
            await asyncio.sleep(self.ctx.config.replication.scrub_interval)

    async def _scrub(self, tier: Tier) -> ScrubReport:
        """One tier's scrub in a worker thread, told to stop if this coroutine is cancelled
        (a scrub of a long history takes minutes; shutdown must not wait for it)."""
        stop = threading.Event()
        try:
            return await asyncio.to_thread(scrub_tier, self.catalog, self.feed, tier, stop=stop)
        except asyncio.CancelledError:
            stop.set()
            raise

    # --- topology ------------------------------------------------------------------

    def _tier_rules(self) -> dict[Tier, Rule]:
        """Per warm/cold tier this region takes part in, the rule with the tightest SLO."""
        chosen: dict[Tier, Rule] = {}
        for rule in self.ctx.config.rules:
            if rule.tier not in ACTIVE_PASSIVE_TIERS:
                continue
            if self.region not in (rule.from_region, *rule.to_regions):
                continue
            held = chosen.get(rule.tier)
            if held is None or rule.lag_slo < held.lag_slo:
                chosen[rule.tier] = rule
        return chosen

    def participants(self, tier: Tier) -> set[str]:
        """``{from} ∪ to`` over every rule of ``tier`` this region takes part in."""
        names: set[str] = set()
        for rule in self.ctx.config.rules:
            members = {rule.from_region, *rule.to_regions}
            if rule.tier == tier and self.region in members:
                names |= members
        return names

    def primary_of_tier(self, tier: Tier) -> str | None:
        if self._primary_provider is not None:
            return self._primary_provider(tier)
        return self.ctx.config.bootstrap_primary(tier)

    def primary_for(self, rule: Rule) -> str:
        primary = self._primary_provider(rule.tier) if self._primary_provider else None
        return primary or rule.from_region

    def desired_links(self) -> dict[LinkKey, Rule]:
        """The links the current topology calls for (see the module docstring)."""
        wanted: dict[LinkKey, Rule] = {}
        for tier, rule in self._tier_rules().items():
            primary = self.primary_for(rule)
            if primary != self.region:
                if primary in self.ctx.config.peers:
                    wanted[("pull", tier, primary)] = rule
                else:
                    log.warning("no peer to pull from", tier=tier, source=primary)
                continue
            if self.epoch_provider(tier) > 1:
                for peer in sorted(self.participants(tier) - {self.region}):
                    if peer in self.ctx.config.peers:
                        wanted[("reconcile", tier, peer)] = rule
        return wanted

    async def _follow_topology(self) -> None:
        """Worker: re-run :meth:`refresh_topology` after every failover state change.

        Error handling: an exception propagates to the supervisor, which logs,
        counts and restarts this worker (the event stays set, so the next run
        retries at once).
        """
        while True:
            await self._topology_changed.wait()
            await self.refresh_topology()

    async def refresh_topology(self) -> None:
        """Set divergent partitions aside, then make the running links match the topology.

        Divergent partitions move first so that a replaced copy of one ends up
        under ``_divergent/``, not ``_superseded/``; the first round (at start)
        also releases the pull links, which wait for it before their first
        pass. A walk's progress is in ``/v1/status``
        (``reconciliation.divergence_check``).

        Error handling: a failing walk propagates to the topology worker's
        supervisor (logged, counted, restarted), but the links are released
        anyway: a commit still judges a held copy against the fence
        (:meth:`PartitionCommitter.already_committed`), so pulling never
        depends on the walk for safety, only for where a replaced copy is kept.
        """
        self._topology_changed.clear()
        try:
            for tier in self._tier_rules():
                if self.primary_of_tier(tier) == self.region:
                    continue
                record = self.reconciliation[tier]
                walk = record.walk = DivergenceWalk()
                try:
                    moved = await asyncio.to_thread(
                        set_aside_divergent, self.root, tier, self.catalog, walk
                    )
                except BaseException as exc:
                    # Cancelled (the daemon stops) or failed: the thread may still
                    # be walking; it stops before its next manifest, so shutdown
                    # never waits for a walk of the whole history.
                    walk.stop_requested = True
                    walk.finish(error=str(exc) or type(exc).__name__)
                    raise
                walk.finish()
                if moved:
                    self.ctx.metrics.reconciled_partitions_total.labels(
                        tier=tier, action="divergent"
                    ).inc(len(moved))
                    record.note_divergent(moved)
                    record.last_run = self.ctx.clock.now()
                    record.epoch = self.epoch_provider(tier)
        finally:
            self._divergence_checked.set()
        await self._match_links()

    async def _match_links(self) -> None:
        """Stop the links the topology no longer calls for and start the missing ones."""
        wanted = self.desired_links()
        for key in sorted(set(self.links) - set(wanted)):
            await self._drop_link(key)
        for key, rule in sorted(wanted.items()):
            if key not in self.links:
                self._add_link(key, rule)

    async def _drop_link(self, key: LinkKey) -> None:
        scheduler = self.schedulers.pop(key)
        link = self.links.pop(key)
        await self.ctx.supervisor.cancel(scheduler.name)
        if isinstance(link, ReplicationLink):
            link.forget_metrics()
            link.executor.close()
        log.info("replication link stopped", kind=key[0], tier=key[1], peer=key[2])

    def _add_link(self, key: LinkKey, rule: Rule) -> None:
        kind, tier, peer = key
        rep = self.ctx.config.replication
        link: AnyLink
        if kind == "pull":
            mirror = self._bucket_mirror(tier, peer)
            link = ReplicationLink(
                rule=rule,
                region=self.region,
                peer=self._peer(peer),
                catalog=self.catalog,
                feed=mirror.index if mirror is not None else self.feed,
                executor=mirror or self._executor(self._file_source(tier, peer)),
                metrics=self.ctx.metrics,
                clock=self.ctx.clock,
                epoch_provider=self.epoch_provider,
                step_max_partitions=rep.step_max_partitions,
                max_concurrency=rep.max_concurrency,
                anti_entropy_interval=rep.anti_entropy_interval,
                index_ready=self._index_ready,
                divergence_checked=self._divergence_checked,
                peer_reporter=self._peer_reporter,
                feed_indexes_disk=mirror is None,
            )
            name = f"replication:{tier}:{peer}"
            # Following the feed costs one indexed query at the source, so a pull
            # link polls often: a new seal arrives within about one poll.
            interval = min(interval_for_slo(rule.lag_slo), rep.feed_poll_interval)
        else:
            link = ReconcileLink(
                rule=rule,
                region=self.region,
                peer=self._peer(peer),
                catalog=self.catalog,
                make_executor=self._executor,
                metrics=self.ctx.metrics,
                clock=self.ctx.clock,
                epoch_provider=self.epoch_provider,
                record=self.reconciliation[tier],
                step_max_partitions=rep.step_max_partitions,
                bucket_index=(
                    self.bucket_held.feed(tier, self.feed) if self.bucket_held.holds(tier) else None
                ),
            )
            name = f"reconcile:{tier}:{peer}"
            interval = interval_for_slo(rule.lag_slo)
        scheduler: PassScheduler[PassReport] = PassScheduler(name, interval, link.run_pass)
        self.links[key] = link
        self.schedulers[key] = scheduler
        self.ctx.supervisor.spawn(scheduler.name, scheduler.run_forever)
        log.info("replication link started", kind=kind, tier=tier, peer=peer)

    # --- wiring ------------------------------------------------------------------

    def _session(self) -> aiohttp.ClientSession:
        if self.ctx.http is not None:
            return self.ctx.http
        if self._own_session is None:
            self._own_session = aiohttp.ClientSession()
        return self._own_session

    def _peer(self, region: str) -> HttpPeer:
        rep = self.ctx.config.replication
        return HttpPeer(
            self._session(),
            region,
            self.ctx.config.peers[region],
            headers=self.ctx.peer_headers(),
            request_timeout=rep.request_timeout,
            concurrency=rep.max_concurrency,
        )

    def _file_source(self, tier: Tier, region: str) -> HttpPeer | BucketFileSource:
        """Where a pull link reads file bytes: the peer's bucket when the config names it
        (``[storage.sources.REGION.TIER]``, storage/bucket_source.py), else its admin API."""
        if not is_active_passive(tier):
            return self._peer(region)
        backend = self.ctx.config.storage.sources.get(region, {}).get(tier)
        if backend is None:
            return self._peer(region)
        return BucketFileSource(region, TierBucket(tier, backend, metrics=self.ctx.metrics))

    def _bucket_mirror(self, tier: Tier, region: str) -> BucketMirrorExecutor | None:
        """The bucket → bucket executor when this region's tier and ``region``'s both live in
        buckets on different endpoints (replication/bucket_executor.py), else ``None``."""
        if not is_active_passive(tier):
            return None
        storage = self.ctx.config.storage
        mine, theirs = storage.tiers.get(tier), storage.sources.get(region, {}).get(tier)
        if mine is None or theirs is None:
            return None
        target = TierBucket(tier, mine, metrics=self.ctx.metrics)
        source = TierBucket(tier, theirs, metrics=self.ctx.metrics)
        if not streams_across_endpoints(target, source):
            return None  # same endpoint: disk cache + server-side copy (storage/bucket_sync.py)
        return BucketMirrorExecutor(
            root=self.root,
            region=self.region,
            source=BucketFileSource(region, source),
            target=target,
            metrics=self.ctx.metrics,
            epoch_provider=self.epoch_provider,
            primary_provider=self.primary_of_tier,
            index=bucket_index(self.root, tier),
            retry_attempts=self.ctx.config.replication.retry_attempts,
            # The disk path's validators and quarantine, on spooled copies.
            validators=self.validators,
            strict=self.ctx.config.validation.strict,
            max_validations=self.ctx.config.replication.max_bucket_validations,
            spool_partitions=self.ctx.config.replication.bucket_spool_partitions,
        )

    def _executor(self, source: HttpPeer | ReconcileSource | BucketFileSource) -> WarmColdExecutor:
        return WarmColdExecutor(
            root=self.root,
            region=self.region,
            source=source,
            metrics=self.ctx.metrics,
            retry_attempts=self.ctx.config.replication.retry_attempts,
            validators=self.validators,
            strict=self.ctx.config.validation.strict,
            max_validations=self.ctx.config.replication.max_validations,
            # Every download slot writes/hashes/fsyncs, plus one for the
            # per-partition steps (check, commit); validations have their own
            # max_validations threads (the verifier's).
            io_threads=self.ctx.config.replication.max_concurrency + 1,
        )

    # --- handlers --------------------------------------------------------------------

    async def handle_sync(self, request: web.Request) -> web.Response:
        """``POST /v1/replication/sync`` ``{"tier"?, "from"?, "kind"?, "check"?}``: run passes now.

        Runs one pass of every current link matching the filters (``kind``:
        ``pull`` or ``reconcile``) and answers their reports, each with its
        ``kind``; 400 when no link matches (e.g. this region is the primary).
        ``check`` (pull links): ``feed`` (follow the change feed only),
        ``digest`` (default: also compare digests with the source and repair)
        or ``full`` (scrub this region's disk first, then as ``digest``).
        """
        body = await json_object(request, allow_empty=True)
        tier, src, kind = body.get("tier"), body.get("from"), body.get("kind")
        check = body.get("check", "digest")
        if check not in CHECKS:
            raise UsageError(f"check must be one of {list(CHECKS)}, not {check!r}")
        chosen = [
            (key, scheduler)
            for key, scheduler in sorted(self.schedulers.items())
            if (tier is None or key[1] == tier)
            and (src is None or key[2] == src)
            and (kind is None or key[0] == kind)
        ]
        if not chosen:
            raise UsageError(f"no warm/cold link matches tier={tier!r} from={src!r} kind={kind!r}")
        passes = []
        for key, scheduler in chosen:
            link = self.links[key]
            if isinstance(link, ReplicationLink):
                report = await scheduler.trigger(functools.partial(link.run_pass, check))
            else:
                report = await scheduler.trigger()
            passes.append({**report.to_json(), "kind": key[0]})
        return web.json_response({"passes": passes})

    async def handle_seal(self, request: web.Request) -> web.Response:
        """``POST /v1/partitions/seal`` ``{"tier", "partition"}``: seal a written partition.

        Seals ``{storage.root}/{tier}/{partition}`` as this region at the
        tier's current epoch, through the storage fence: a region that is not
        the current primary gets 409 ``fenced``, counted as
        ``cryptorun_fenced_total{operation="seal"}``. 400 for a path outside
        the layout or a directory that cannot be sealed; 503 ``seal_refused``
        (retry later) while this region has not confirmed its roles with its
        peers (file store, after start-up).
        """
        body = await json_object(request)
        tier = parse_tier(str(body.get("tier", "")))
        if tier not in ACTIVE_PASSIVE_TIERS:
            raise UsageError("sealing through the API covers the warm and cold tiers")
        key = parse_partition_path(tier, str(body.get("partition", "")))
        refusal = self._write_refusal(tier)
        if refusal is not None:
            raise SealRefusedError(f"seal refused for now: {refusal}")
        epoch = self.epoch_provider(tier)
        if epoch < 1:
            # Roles not known yet (start-up): a seal stamped with epoch 0 could never
            # be fenced later, so refuse until the failover state has loaded.
            raise StateStoreError(f"the {tier} tier's epoch is not known yet; retry shortly")
        try:
            manifest = await asyncio.to_thread(
                seal_partition, key.directory(self.root), writer_region=self.region, epoch=epoch
            )
        except FencedError as exc:
            self.ctx.metrics.fenced_total.labels(tier=tier, operation="seal").inc()
            log.warning(
                "seal refused by the fence",
                tier=tier,
                partition=key.relpath,
                epoch=epoch,
                detail=str(exc),
            )
            raise
        except PathRejectedError:
            raise
        except StorageError as exc:
            raise UsageError(f"cannot seal {tier}/{key.relpath}: {exc}") from exc
        return web.json_response({"sealed": dict(manifest_summary(manifest))})

    async def handle_simulate(self, request: web.Request) -> web.Response:
        """``POST /v1/replication/simulate``: the plan a pass would run; transfers nothing."""
        body = await json_object(request)
        tier = parse_tier(str(body.get("tier", "")))
        if tier not in ACTIVE_PASSIVE_TIERS:
            raise UsageError("simulate covers the warm and cold tiers (hot replicates as a stream)")
        src, dst = str(body.get("from", "")), str(body.get("to", ""))
        known = set(self.ctx.config.regions)
        for what, name in (("from", src), ("to", dst)):
            if name not in known:
                raise UsageError(f"{what} region {name!r} is unknown (known: {sorted(known)})")
        if src == dst:
            raise UsageError("from and to name the same region")
        window = TimeRange.parse(str(body.get("window", "")))
        strict = body.get("strict", False)
        if not isinstance(strict, bool):
            raise UsageError("strict must be true or false")
        plan = await self.simulate(tier, src, dst, window)

        def render() -> bytes:
            problems = plan.problems()
            doc = {
                **plan.to_json(),
                "dry_run": True,
                "strict": strict,
                "ok": not (strict and problems),
                "problems": problems,
            }
            return json.dumps(doc).encode()

        # A plan holds every partition of its window: rendered off the event loop.
        rendered = await asyncio.to_thread(render)
        return web.Response(body=rendered, content_type="application/json")

    async def simulate(self, tier: Tier, src: str, dst: str, window: TimeRange) -> Plan:
        """Plan ``src → dst`` over ``window`` from live catalogs (local or a peer's)."""
        health = HEALTHY
        source: Sequence[SourcePartition] = []
        dest_manifests: list[Manifest] = []
        held: dict[str, Committed] = {}
        try:
            if src == self.region:
                entries = await self._local_entries(tier, window)
                source = entries
                if self.bucket_held.holds(tier):
                    # What this region holds only in its bucket is part of what it offers.
                    in_bucket = await self.bucket_held.listed_manifests(
                        tier,
                        window=window,
                        max_epoch=None,
                        on_disk=[e.manifest for e in entries if e.manifest is not None],
                    )
                    source = [*entries, *listed(in_bucket)]
            else:
                health = await self._peer(src).probe()
                if health.healthy:
                    source = listed(await self._listing(src, tier, window))
            if health.healthy:
                if dst == self.region:
                    # What this region holds, from its index (what a pass plans
                    # against too): one indexed query per day, no disk walk.
                    held = await asyncio.to_thread(self._held_in, tier, window)
                else:
                    health = await self._peer(dst).probe()
                    if health.healthy:
                        dest_manifests = list(
                            await self._listing(dst, tier, window, purpose="inventory")
                        )
        except ReplicationError as exc:
            health = PeerHealth(False, str(exc))
        # Sorting and planning a window's partitions grows with the window: in a thread.
        return await asyncio.to_thread(
            functools.partial(
                plan_replication,
                tier=tier,
                from_region=src,
                to_region=dst,
                window=window,
                source=source,
                destination={**committed_index(dest_manifests), **held},
                now=self.ctx.clock.now(),
                peer=health,
                step_max_partitions=self.ctx.config.replication.step_max_partitions,
                validators=[str(getattr(v, "__name__", type(v).__name__)) for v in self.validators],
            )
        )

    def _held_in(self, tier: Tier, window: TimeRange) -> dict[str, Committed]:
        """Committed partitions of every day ``window`` touches (blocking; extra ones are
        harmless: the planner looks up only the source's partitions)."""
        held: dict[str, Committed] = {}
        # A bucket-held tier's index is its bucket's (which also lists what its
        # disk → bucket worker committed); any other tier's is the disk feed.
        feed = self.bucket_held.feed(tier, self.feed)
        day = window.start.date()
        while datetime(day.year, day.month, day.day, tzinfo=UTC) < window.end:
            for h in feed.held(tier, day.isoformat()):
                held[h.partition] = Committed(h.content_hash, h.epoch)
            day += timedelta(days=1)
        return held

    async def _local_entries(self, tier: Tier, window: TimeRange) -> list[CatalogEntry]:
        return await asyncio.to_thread(self.catalog.scan, tier, start=window.start, end=window.end)

    async def _listing(
        self, region: str, tier: Tier, window: TimeRange, purpose: Purpose = "source"
    ) -> tuple[Manifest, ...]:
        listing = await self._peer(region).list_partitions(tier, window, purpose=purpose)
        return listing.manifests
