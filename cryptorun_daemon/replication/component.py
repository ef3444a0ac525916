"""The warm/cold replication component: serving, pulling, lag, simulate.

Plugs into the daemon through the ``Component`` protocol. As a source it
serves its sealed partitions (``GET /v1/partitions…``); as a destination it
runs one :class:`ReplicationLink` per warm/cold rule naming this region in
``to``, each driven by a :class:`PassScheduler` spawned on the supervisor.

Fencing hooks: ``epoch_provider(tier)`` gives the tier's current epoch
(stamped into manifests this region computes, and compared with a source's
epoch before pulling); ``primary_provider(tier)`` names the region to pull
from (default: the rule's ``from``). Both default to static values until the
failover subsystem provides real ones.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from cryptorun_daemon.config import Rule, Tier
from cryptorun_daemon.errors import ReplicationError, UsageError
from cryptorun_daemon.replication.executors_warm_cold import StepValidator, WarmColdExecutor
from cryptorun_daemon.replication.link import ReplicationLink
from cryptorun_daemon.replication.planner import (
    HEALTHY,
    PeerHealth,
    SourcePartition,
    committed_index,
    listed,
    plan_replication,
)
from cryptorun_daemon.replication.rules import Plan, TimeRange, parse_tier
from cryptorun_daemon.replication.scheduler import PassScheduler, interval_for_slo
from cryptorun_daemon.replication.serving import PartitionServer
from cryptorun_daemon.replication.transport_http import HttpPeer
from cryptorun_daemon.runtime.component import DaemonContext
from cryptorun_daemon.storage.catalog import Catalog, CatalogEntry
from cryptorun_daemon.storage.manifest import DEFAULT_HASH_CACHE, Manifest

log = structlog.get_logger("cryptorun.replication")

WARM_COLD_TIERS: tuple[Tier, ...] = ("warm", "cold")


class WarmColdComponent:
    """Warm and cold tier replication for one region's daemon.

    Resource handling: ``start`` spawns one supervised scheduler per link and
    opens a client session only if the daemon did not provide one; ``stop``
    closes that session (the supervisor cancels the schedulers).
    """

    name = "warm_cold"

    def __init__(
        self,
        ctx: DaemonContext,
        *,
        validators: Sequence[StepValidator] = (),
        epoch_provider: Callable[[Tier], int] | None = None,
        primary_provider: Callable[[Tier], str] | None = None,
        peer_reporter: Callable[[str, bool, str | None], None] | None = None,
    ) -> None:
        self.ctx = ctx
        config = ctx.config
        self.region = config.region
        self.root = config.storage.root
        self.validators = tuple(validators)
        self.epoch_provider: Callable[[Tier], int] = epoch_provider or (lambda _tier: 1)
        self._primary_provider = primary_provider
        self._peer_reporter = peer_reporter
        self.catalog = Catalog(self.root, metrics=ctx.metrics, hash_cache=DEFAULT_HASH_CACHE,
                               clock=ctx.clock.now)
        self.server = PartitionServer(
            root=self.root, region=self.region, catalog=self.catalog,
            epoch_provider=self.epoch_provider, now=ctx.clock.now,
        )
        self.links: dict[tuple[Tier, str], ReplicationLink] = {}
        self.schedulers: dict[tuple[Tier, str], PassScheduler[Any]] = {}
        self._own_session: aiohttp.ClientSession | None = None
        self._started = False

    # --- Component protocol --------------------------------------------------------

    def routes(self) -> Sequence[web.RouteDef]:
        return [
            *self.server.routes(),
            web.post("/v1/replication/simulate", self.handle_simulate),
            web.post("/v1/replication/sync", self.handle_sync),
        ]

    async def start(self) -> None:
        for tier in WARM_COLD_TIERS:
            (self.root / tier).mkdir(parents=True, exist_ok=True)
        for rule in self._inbound_rules():
            source = self.primary_for(rule)
            if source == self.region or source not in self.ctx.config.peers:
                log.warning("no peer to pull from", tier=rule.tier, source=source)
                continue
            link = ReplicationLink(
                rule=rule,
                region=self.region,
                peer=self._peer(source),
                catalog=self.catalog,
                executor=self._executor(source),
                metrics=self.ctx.metrics,
                clock=self.ctx.clock,
                epoch_provider=self.epoch_provider,
                step_max_partitions=self.ctx.config.replication.step_max_partitions,
                max_concurrency=self.ctx.config.replication.max_concurrency,
                peer_reporter=self._peer_reporter,
            )
            key = (rule.tier, source)
            self.links[key] = link
            scheduler = PassScheduler(
                f"replication:{rule.tier}:{source}", interval_for_slo(rule.lag_slo), link.run_pass
            )
            self.schedulers[key] = scheduler
            self.ctx.metrics.replication_slo_seconds.labels(tier=rule.tier,
                                                            region=self.region).set(rule.lag_slo)
            self.ctx.supervisor.spawn(scheduler.name, scheduler.run_forever)
        self._started = True

    async def stop(self) -> None:
        if self._own_session is not None:
            await self._own_session.close()
            self._own_session = None

    def status(self, *, tier: str | None, region: str | None) -> dict[str, Any]:
        tiers: dict[str, Any] = {}
        for t in WARM_COLD_TIERS:
            if tier is not None and t != tier:
                continue
            sources = {
                src: link.status()
                for (link_tier, src), link in sorted(self.links.items())
                if link_tier == t and (region is None or region in (src, self.region))
            }
            # Roles and epochs are the failover component's part of the document.
            tiers[t] = {"sources": sources}
        return {"tiers": tiers}

    def not_ready_reasons(self) -> list[str]:
        return [] if self._started else ["warm/cold replication not started"]

    # --- wiring ------------------------------------------------------------------

    def _inbound_rules(self) -> list[Rule]:
        return [
            r for r in self.ctx.config.rules
            if r.tier in WARM_COLD_TIERS and self.region in r.to_regions
        ]

    def primary_for(self, rule: Rule) -> str:
        return self._primary_provider(rule.tier) if self._primary_provider else rule.from_region

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

    def _executor(self, source: str) -> WarmColdExecutor:
        return WarmColdExecutor(
            root=self.root,
            region=self.region,
            source=self._peer(source),
            metrics=self.ctx.metrics,
            retry_attempts=self.ctx.config.replication.retry_attempts,
            validators=self.validators,
            strict=self.ctx.config.validation.strict,
        )

    # --- handlers --------------------------------------------------------------------

    async def handle_sync(self, request: web.Request) -> web.Response:
        """``POST /v1/replication/sync`` ``{"tier"?, "from"?}``: run a pass now and report it."""
        body = await _json_body(request, allow_empty=True)
        tier = body.get("tier")
        src = body.get("from")
        chosen = [
            (key, scheduler) for key, scheduler in sorted(self.schedulers.items())
            if (tier is None or key[0] == tier) and (src is None or key[1] == src)
        ]
        if not chosen:
            raise UsageError(f"no inbound warm/cold link matches tier={tier!r} from={src!r}")
        reports = [await scheduler.trigger() for _, scheduler in chosen]
        return web.json_response({"passes": [r.to_json() for r in reports]})

    async def handle_simulate(self, request: web.Request) -> web.Response:
        """``POST /v1/replication/simulate``: the plan a pass would run; transfers nothing."""
        body = await _json_body(request)
        tier = parse_tier(str(body.get("tier", "")))
        if tier not in WARM_COLD_TIERS:
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
        problems = plan.problems()
        return web.json_response({
            **plan.to_json(),
            "dry_run": True,
            "strict": strict,
            "ok": not (strict and problems),
            "problems": problems,
        })

    async def simulate(self, tier: Tier, src: str, dst: str, window: TimeRange) -> Plan:
        """Plan ``src → dst`` over ``window`` from live catalogs (local or a peer's)."""
        health = HEALTHY
        source: Sequence[SourcePartition] = []
        dest_manifests: list[Manifest] = []
        try:
            if src == self.region:
                source = await self._local_entries(tier, window)
            else:
                health = await self._peer(src).probe()
                if health.healthy:
                    source = listed(await self._listing(src, tier, window))
            if health.healthy:
                if dst == self.region:
                    dest_manifests = [e.manifest for e in await self._local_entries(tier, window)
                                      if e.sealed and e.manifest is not None]
                else:
                    health = await self._peer(dst).probe()
                    if health.healthy:
                        dest_manifests = list(await self._listing(dst, tier, window))
        except ReplicationError as exc:
            health = PeerHealth(False, str(exc))
        return plan_replication(
            tier=tier,
            from_region=src,
            to_region=dst,
            window=window,
            source=source,
            destination=committed_index(dest_manifests),
            now=self.ctx.clock.now(),
            peer=health,
            step_max_partitions=self.ctx.config.replication.step_max_partitions,
            validators=[str(getattr(v, "__name__", type(v).__name__)) for v in self.validators],
        )

    async def _local_entries(self, tier: Tier, window: TimeRange) -> list[CatalogEntry]:
        return await asyncio.to_thread(self.catalog.scan, tier, start=window.start, end=window.end)

    async def _listing(self, region: str, tier: Tier, window: TimeRange) -> tuple[Manifest, ...]:
        listing = await self._peer(region).list_partitions(tier, window)
        return listing.manifests


async def _json_body(request: web.Request, *, allow_empty: bool = False) -> dict[str, Any]:
    if allow_empty and not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except ValueError:
        raise UsageError("request body must be a JSON object") from None
    if not isinstance(body, dict):
        raise UsageError("request body must be a JSON object")
    return body
