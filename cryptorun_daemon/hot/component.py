"""The hot tier as a daemon component: feeds → hot log → mirror server/clients → sealer.

::

    feeds ──► HotLog ──► journal (segments, fsync policy) ──► HotSealer ──► warm/
                │  └───► replay buffer ──► MirrorServer (/v1/hot/stream) ──► peers
                └── SourceAuthority ◄── MirrorClient per peer ◄── peers' streams

Wiring (``cryptorun_daemon/components.py``)::

    from cryptorun_daemon.hot.component import HotComponent
    components.append(HotComponent(ctx))

``is_warm_primary`` and ``epoch`` default to the config
(:meth:`~cryptorun_daemon.config.Config.bootstrap_primary` of warm, or this
region when no rule names warm; epoch 0); the failover component should pass
its live role and epoch instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import Gauge

from cryptorun_daemon.config import Config, FeedConfig
from cryptorun_daemon.errors import IngestError
from cryptorun_daemon.hot.authority import SourceAuthority
from cryptorun_daemon.hot.buffer import ReplayBuffer
from cryptorun_daemon.hot.feed import BatchFeed, Feed, MarketRecord
from cryptorun_daemon.hot.feeds_builtin import ReplayFeed, SyntheticFeed
from cryptorun_daemon.hot.follower import OriginFollower
from cryptorun_daemon.hot.journal import Journal
from cryptorun_daemon.hot.journal_repair import journal_directory
from cryptorun_daemon.hot.log import HotLog
from cryptorun_daemon.hot.mirror_client import MirrorClient
from cryptorun_daemon.hot.mirror_server import MirrorServer
from cryptorun_daemon.hot.sealer import HotSealer
from cryptorun_daemon.ingest.kraken.connector import KrakenFeed
from cryptorun_daemon.ingest.kraken.handler import KrakenHandler
from cryptorun_daemon.metrics import Metrics
from cryptorun_daemon.runtime.component import DaemonContext, ReloadResult, changed_sections

log = structlog.get_logger("cryptorun.hot")
GAUGE_INTERVAL = 0.5
# A feed catching up yields records back to back without awaiting anything; without an
# explicit yield every few hundred records, such a burst (up to a second of records)
# would hold the event loop and stall mirror streams, journal reads and status.
INGEST_YIELD_EVERY = 256
# A feed this far behind its source is reported as behind in its status (the synthetic
# feed starts skipping events at the same point, feeds_builtin.MAX_BURST_SECONDS).
BEHIND_AFTER_SECONDS = 1.0


@dataclass
class IngestStats:
    """What the ingest loop of one feed has done, for status and the lag gauge."""

    records: int = 0
    batches: int = 0
    lag_seconds: float = 0.0
    max_lag_seconds: float = 0.0

    def set_lag(self, seconds: float, gauge: Gauge) -> None:
        self.lag_seconds = seconds
        self.max_lag_seconds = max(self.max_lag_seconds, seconds)
        gauge.set(seconds)

    def status(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "batches": self.batches,
            "lag_seconds": round(self.lag_seconds, 6),
            "max_lag_seconds": round(self.max_lag_seconds, 6),
            "behind": self.lag_seconds >= BEHIND_AFTER_SECONDS,
        }


def build_feed(config: FeedConfig, metrics: Metrics) -> Feed:
    """The feed for one ``[[feeds]]`` entry.

    Error handling: :class:`IngestError` when the entry is unusable.
    """
    if config.kind == "synthetic":
        return SyntheticFeed(config)
    if config.kind == "replay":
        return ReplayFeed(config, raw_handler=_raw_handler(config, metrics))
    if config.kind == "kraken":
        return KrakenFeed(config, metrics)
    raise IngestError(f"feed {config.name!r}: unknown kind {config.kind!r}")


def _raw_handler(
    config: FeedConfig, metrics: Metrics
) -> Callable[[str, int], list[MarketRecord]] | None:
    """Decode recorded raw Kraken frames with the Kraken handler (other venues: none)."""
    if config.venue != "kraken":
        return None
    handler = KrakenHandler(
        venue=config.venue, symbols=config.symbols, depth=config.book_depth, metrics=metrics
    )
    handler.start_session()

    def handle(frame: str, ingest_ts: int) -> list[MarketRecord]:
        records: list[MarketRecord] = handler.handle_frame(
            frame, ingest_ts=ingest_ts, now=ingest_ts / 1e9
        )
        return records

    return handle


class HotComponent:
    """Owns the hot log and every hot-tier worker of one region."""

    name = "hot"

    def __init__(
        self,
        ctx: DaemonContext,
        *,
        is_warm_primary: Callable[[], bool] | None = None,
        epoch: Callable[[], int] | None = None,
        role_settled: Callable[[], bool] | None = None,
        seal_validator: Callable[[Path, str, str], Any] | None = None,
    ) -> None:
        self.ctx = ctx
        cfg = ctx.config
        hot = cfg.hot
        self.region = cfg.region
        root = cfg.storage.root
        journal = Journal(
            journal_directory(root),
            segment_bytes=hot.segment_bytes,
            fsync_interval=hot.fsync_interval,
            fsync_records=hot.fsync_records,
        )
        self.log = HotLog(
            cfg.region, journal, ReplayBuffer(hot.buffer_records, hot.buffer_bytes), ctx.metrics
        )
        self.authority = SourceAuthority(
            cfg.region,
            [cfg.region, *cfg.peers],
            gate_seconds=hot.freshness_gate,
            metrics=ctx.metrics,
            max_markets=hot.max_tracked_markets,
        )
        self.log.observers.append(self.authority.observe)
        self.server = MirrorServer(
            self.log,
            ctx.metrics,
            heartbeat_interval=hot.heartbeat_interval,
            max_frame_bytes=hot.max_frame_bytes,
            max_subscribers=hot.max_subscribers,
            subscriber_timeout=hot.subscriber_timeout,
        )
        # Without a warm rule nothing replicates warm: each region seals its own hot data.
        warm_primary = cfg.bootstrap_primary("warm") or cfg.region
        self.sealer = HotSealer(
            region=cfg.region,
            root=root,
            journal=journal,
            authority=self.authority,
            partition_length=hot.partition_length,
            seal_grace=hot.seal_grace,
            is_warm_primary=is_warm_primary or (lambda: warm_primary == cfg.region),
            epoch=epoch or (lambda: 0),
            metrics=ctx.metrics,
            role_settled=role_settled or (lambda: True),
            validate=seal_validator,
        )
        self.clients: dict[str, MirrorClient] = {}
        for peer, url in cfg.peers.items():
            follower = OriginFollower(self.log, peer, ctx.metrics)
            self.clients[peer] = MirrorClient(
                follower,
                base_url=url,
                session=self._session,
                headers=ctx.peer_headers(),
                metrics=ctx.metrics,
                max_frame_bytes=hot.max_frame_bytes,
                ping_interval=hot.heartbeat_interval,
            )
        self.feeds: dict[str, Feed] = {f.name: build_feed(f, ctx.metrics) for f in cfg.feeds}
        self.ingest_errors = 0
        self.ingest: dict[str, IngestStats] = {}
        self._started = False

    def _session(self) -> Any:
        if self.ctx.http is None:
            raise RuntimeError("the daemon's HTTP session is not open")
        return self.ctx.http

    # ---------------------------------------------------------------- Component
    def routes(self) -> Sequence[web.RouteDef]:
        return [web.get("/v1/hot/stream", self.server.handle)]

    async def start(self) -> None:
        """Recover the log, then spawn syncer, feeds, mirror clients, sealer and gauges."""
        await asyncio.to_thread(self.log.open)
        self._started = True
        spawn = self.ctx.supervisor.spawn
        spawn("hot:journal-sync", self.log.journal.run_syncer)
        spawn("hot:gauges", self._gauges)
        for name, feed in self.feeds.items():
            spawn(f"hot:feed:{name}", lambda feed=feed: self._ingest(feed))  # type: ignore[misc]
        for peer, client in self.clients.items():
            spawn(f"hot:mirror:{peer}", client.run)
        spawn("hot:sealer", self.sealer.run)

    async def _ingest(self, feed: Feed) -> None:
        """Append every record a feed yields to the hot log, in batches when it offers them.

        After each batch or record the feed's ingest lag is published
        (``cryptorun_hot_ingest_lag_seconds``, feed status), so a region that
        cannot keep up says so instead of silently skipping.
        Error handling: a record JSON cannot encode is counted and skipped; a
        feed that raises crashes this worker, and the supervisor restarts it.
        Resource handling: the feed's iterator is closed when this worker ends.
        """
        stats = self.ingest[feed.name] = IngestStats()
        gauge = self.ctx.metrics.hot_ingest_lag_seconds.labels(region=self.region, feed=feed.name)
        if isinstance(feed, BatchFeed):
            await self._ingest_batches(feed, stats, gauge)
            return
        records = feed.records()
        since_yield = 0
        try:
            async for record in records:
                if self.log.closed:
                    return
                try:
                    self.log.append_local(record)
                except ValueError:
                    self.ingest_errors += 1
                stats.records += 1
                ingest_ts = record.fields.get("ingest_ts")
                if isinstance(ingest_ts, int):
                    stats.set_lag(max(0.0, (time.time_ns() - ingest_ts) / 1e9), gauge)
                since_yield += 1
                if since_yield >= INGEST_YIELD_EVERY:
                    since_yield = 0
                    await asyncio.sleep(0)
        finally:
            with contextlib.suppress(Exception):
                await records.aclose()  # type: ignore[attr-defined]

    async def _ingest_batches(self, feed: BatchFeed, stats: IngestStats, gauge: Gauge) -> None:
        """Append each batch a :class:`BatchFeed` yields in one go (``append_local_batch``).

        Error handling: records JSON cannot encode are counted in
        ``ingest_errors`` and skipped, the rest of their batch is taken; a feed
        that raises crashes the worker (the supervisor restarts it).
        Resource handling: the feed's iterator is closed when this worker ends.
        """
        batches = feed.batches()
        try:
            async for batch in batches:
                if self.log.closed:
                    return
                _, refused = self.log.append_local_batch(batch)
                self.ingest_errors += refused
                stats.records += len(batch)
                stats.batches += 1
                stats.set_lag(feed.ingest_lag_seconds(), gauge)
                # A feed catching up hands over batch after batch without awaiting
                # anything: yield so mirror streams, journal reads and status run.
                await asyncio.sleep(0)
        finally:
            with contextlib.suppress(Exception):
                await batches.aclose()  # type: ignore[attr-defined]

    async def _gauges(self) -> None:
        """Refresh gauges, follow the journal's health and re-elect sources.

        While the journal refuses appends the local source is suspended, so
        the peers' copies of the same markets are authoritative (and sealed);
        it is resumed as soon as the journal takes records again.
        """
        while True:
            self.log.update_gauges()
            if self.log.journal.writable:
                self.authority.resume(self.region)
            else:
                self.authority.suspend(self.region, "disk")
            self.authority.evaluate()
            await asyncio.sleep(GAUGE_INTERVAL)

    async def stop(self) -> None:
        """Close every mirror WebSocket with 1001, then close the journal cleanly."""
        for client in self.clients.values():
            client.stopped = True
        await asyncio.gather(*(c.close() for c in self.clients.values()), return_exceptions=True)
        await self.server.close_all()
        if self._started:
            self.log.close()

    def reload(self, new_config: Config) -> ReloadResult:
        """Nothing live: the journal, feeds and mirror links are built from these at start."""
        return ReloadResult(
            needs_restart=changed_sections(self.ctx.config, new_config, "hot", "feeds")
        )

    def not_ready_reasons(self) -> list[str]:
        """``disk: ...`` while the journal refuses appends; ready again once it takes them."""
        if not self._started:
            return ["hot log is not open"]
        journal = self.log.journal
        if not journal.writable:
            return [f"disk: hot journal refuses appends ({journal.failure or 'fsync behind'})"]
        return []

    def status(self, *, tier: str | None, region: str | None) -> dict[str, Any]:
        if tier not in (None, "hot"):
            return {}
        origins: dict[str, Any] = {
            self.region: {
                "local": True,
                "replid": self.log.replid,
                "head_seq": self.log.seq,
                "applied_seq": self.log.seq,
                "connected": True,
                "last_gap": self.log.local_gaps[-1] if self.log.local_gaps else None,
                "available_from": self.server.backlog.available_from(),
            },
        }
        for peer, client in self.clients.items():
            origins[peer] = {"local": False, **client.status()}
        if region is not None:
            origins = {k: v for k, v in origins.items() if k == region}
        buffer = self.log.buffer
        stream = {
            "origins": origins,
            "buffer": {
                "records": len(buffer),
                "bytes": buffer.bytes,
                "first_seq": buffer.first_seq,
                "last_seq": buffer.last_seq,
                "max_records": buffer.max_records,
                "max_bytes": buffer.max_bytes,
            },
            "journal": {
                "bytes": self.log.journal.bytes_on_disk,
                "segments": len(self.log.journal.segments()),
                "written_records": self.log.journal.written_records,
                "synced_records": self.log.journal.synced_records,
                "recovered_clean": self.log.recovered_clean,
                "recovered_torn_bytes": self.log.recovered_torn_bytes,
                "first_local_seq": self.log.journal.local_index.first_seq,
                "served_records": self.server.backlog.journal_records_served,
                "read_errors": self.server.backlog.journal_read_errors,
                "writable": self.log.journal.writable,
                "failure": self.log.journal.failure,
                "failures": self.log.journal.failures,
                "blocking_reservations": self.log.blocking_reservations,
            },
            "subscribers": self.server.status(),
            "authority": self.authority.status(),
            "sealer": self.sealer.status(),
            "feeds": {
                name: {**feed.status(), "ingest": self.ingest.get(name, IngestStats()).status()}
                for name, feed in self.feeds.items()
            },
            "ingest_errors": self.ingest_errors,
            "dropped": self.log.dropped,
        }
        return {"tiers": {"hot": {"stream": stream}}}
