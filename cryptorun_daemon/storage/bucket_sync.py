"""Disk → bucket: every partition committed under ``storage.root`` lands in the tier's bucket.

For each tier configured with ``[storage.tiers.T]`` a worker
(``object_store:T``) follows this root's change feed
(:mod:`cryptorun_daemon.storage.change_feed`) — the same feed every seal
(the hot sealer, ``cryptorun partitions seal``, the seal endpoint) and every
replica commit appends to — and commits each ``sealed`` entry into the bucket
through :class:`~cryptorun_daemon.storage.bucket_commit.BucketCommitter`:
verified against the manifest, fenced by the bucket's fence object at this
region's current view of the tier's epoch and primary. The local partition
stays as the region's cache (readers and peers are served from it). A replica
whose config names the primary's bucket (``[storage.sources.P.T]``) on the
same endpoint copies the files server-side instead of uploading them, and
reads the copy back to verify it. The local copy passed the step validators
before its commit (the disk executor); the row-level quarantine sidecar they
wrote (``_quarantine.json``) is committed into the bucket with the partition.

Its position is saved in ``{root}/_state/object_store/{tier}.json`` after
every page; a failed partition stops the pass there (nothing after it is
skipped) and is retried on the next pass, so nothing is lost across a crash or
an outage of the store. ``cryptorun_replication_bytes_pending{tier,region}``
is the size of what the feed holds and the bucket does not yet.

On a tier this region holds only in its bucket (a cross-endpoint source is
configured, :func:`~cryptorun_daemon.storage.bucket_source.bucket_held_tiers`)
every commit is also recorded in the bucket index, the feed such a tier is
served from.

A region that is the tier's primary on a store that does not enforce
conditional writes commits nothing unless ``accept_weak_fencing = true``
(reported in status and readiness).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import structlog
from aiohttp import web

from cryptorun_daemon.config import ActivePassiveTier, Config, ObjectStoreTier
from cryptorun_daemon.errors import CryptorunError, FencedError, ResyncNeededError
from cryptorun_daemon.runtime.component import DaemonContext, ReloadResult
from cryptorun_daemon.storage.atomic import atomic_write_bytes, make_durable_dirs
from cryptorun_daemon.storage.bucket_commit import (
    BucketCommitter,
    FenceToken,
    enforces_conditional_writes,
    local_reader,
)
from cryptorun_daemon.storage.bucket_source import bucket_held_tiers
from cryptorun_daemon.storage.change_feed import Change, bucket_index, feed_for
from cryptorun_daemon.storage.manifest import Manifest, read_manifest
from cryptorun_daemon.storage.object_store import TierBucket
from cryptorun_daemon.storage.quarantine_sidecar import read_local_sidecar
from cryptorun_daemon.timefmt import format_rfc3339

log = structlog.get_logger("cryptorun.object_store")

POSITION_DIR: Final = "_state/object_store"
PAGE: Final = 500
POLL_INTERVAL: Final = 0.5


@dataclass
class TierSyncState:
    """What one tier's worker knows; shown in ``/v1/status → tiers.T.backend``."""

    conditional_writes: bool | None = None
    refused: str | None = None
    position: int = 0
    feed_id: str | None = None
    committed: int = 0
    pending_partitions: int = 0
    pending_bytes: int = 0
    last_error: str | None = None
    last_error_at: str | None = None
    orphans_aborted: int = 0
    token: FenceToken | None = field(default=None, repr=False)


class ObjectStoreComponent:
    """The object-store tiers of this region (see the module docstring).

    Error handling: a failed pass records ``last_error`` and is retried after
    the poll interval; request errors are already retried and counted by
    :class:`TierBucket`. Resource handling: one supervised worker per tier;
    the clients' connection pools live as long as the component.
    """

    name = "object_store"

    def __init__(
        self,
        ctx: DaemonContext,
        *,
        epoch_provider: Callable[[ActivePassiveTier], int],
        primary_provider: Callable[[ActivePassiveTier], str | None],
        poll_interval: float = POLL_INTERVAL,
    ) -> None:
        self.ctx = ctx
        self.epoch_provider = epoch_provider
        self.primary_provider = primary_provider
        self.poll_interval = poll_interval
        self.root = ctx.config.storage.root
        self.buckets: dict[ActivePassiveTier, TierBucket] = {}
        self.committers: dict[ActivePassiveTier, BucketCommitter] = {}
        self.states: dict[ActivePassiveTier, TierSyncState] = {}
        # Peers' buckets (``[storage.sources]``) for server-side copies, built once.
        self._sources: dict[tuple[str, ActivePassiveTier], TierBucket] = {}
        # Tiers served from the bucket index (storage/bucket_source.py): commits are indexed.
        self.bucket_held = set(bucket_held_tiers(ctx.config))

    def routes(self) -> Sequence[web.RouteDef]:
        return []

    async def start(self) -> None:
        for tier, config in self.ctx.config.storage.tiers.items():
            bucket = TierBucket(tier, config, metrics=self.ctx.metrics)
            self.buckets[tier] = bucket
            self.committers[tier] = BucketCommitter(bucket, self.root, self.ctx.metrics)
            self.states[tier] = TierSyncState()
            self.ctx.metrics.replication_bytes_pending.labels(
                tier=tier, region=self.ctx.config.region
            ).set(0)
            self.ctx.supervisor.spawn(f"object_store:{tier}", self._worker_for(tier))

    def _worker_for(self, tier: ActivePassiveTier) -> Callable[[], Any]:
        async def worker() -> None:
            await self.run_tier(tier)

        return worker

    async def stop(self) -> None:
        """Nothing to release beyond the workers (the supervisor cancels them)."""

    def status(self, *, tier: str | None, region: str | None) -> dict[str, Any]:
        tiers: dict[str, Any] = {}
        for name in ("warm", "cold"):
            if tier is not None and name != tier:
                continue
            backend = self.ctx.config.storage.tiers.get(name)
            tiers[name] = {"backend": self._backend_status(name, backend)}
        return {"tiers": tiers}

    def _backend_status(self, tier: str, backend: ObjectStoreTier | None) -> dict[str, Any]:
        if backend is None:
            return {"kind": "disk", "root": str(self.root)}
        state = self.states.get(tier)  # type: ignore[call-overload]
        doc: dict[str, Any] = {
            "kind": "s3",
            "url": backend.url,
            "endpoint_url": backend.endpoint_url,
            "accept_weak_fencing": backend.accept_weak_fencing,
        }
        if state is not None:
            doc.update(
                conditional_writes=state.conditional_writes,
                refused=state.refused,
                feed_position=state.position,
                committed=state.committed,
                pending_partitions=state.pending_partitions,
                pending_bytes=state.pending_bytes,
                last_error=state.last_error,
                last_error_at=state.last_error_at,
                orphan_uploads_aborted=state.orphans_aborted,
            )
        return doc

    def not_ready_reasons(self) -> list[str]:
        return [
            f"object_store:{tier}: {state.refused}"
            for tier, state in self.states.items()
            if state.refused is not None
        ]

    def reload(self, new_config: Config) -> ReloadResult:
        if new_config.storage.tiers != self.ctx.config.storage.tiers:
            return ReloadResult(needs_restart=("storage.tiers",))
        return ReloadResult()

    # --- the worker ---------------------------------------------------------------------

    async def run_tier(self, tier: ActivePassiveTier) -> None:
        """Follow the feed of ``tier`` into its bucket until cancelled.

        Error handling: see the class docstring. Resource handling: holds
        nothing between passes but the saved position.
        """
        state = self.states[tier]
        bucket = self.buckets[tier]
        state.conditional_writes = await enforces_conditional_writes(bucket)
        state.orphans_aborted += len(await self.committers[tier].uploader.abort_orphans())
        position = await asyncio.to_thread(self._load_position, tier)
        state.feed_id, state.position = position
        while True:
            try:
                await self.sync_once(tier)
            except (CryptorunError, OSError) as exc:
                state.last_error = f"{type(exc).__name__}: {exc}"
                state.last_error_at = format_rfc3339(self.ctx.clock.now())
                log.warning("object store pass failed", tier=tier, error=state.last_error)
            await asyncio.sleep(self.poll_interval)

    async def sync_once(self, tier: ActivePassiveTier) -> int:
        """One pass: commit the feed's sealed entries after the saved position; return count."""
        state = self.states[tier]
        primary = self.primary_provider(tier)
        backend = self.ctx.config.storage.tiers[tier]
        if (
            primary == self.ctx.config.region
            and state.conditional_writes is False
            and not backend.accept_weak_fencing
        ):
            state.refused = (
                "the store does not enforce conditional writes; refusing to commit as primary "
                "(set accept_weak_fencing = true to accept weaker fencing)"
            )
            return 0
        state.refused = None
        if self.epoch_provider(tier) < 1:
            return 0  # the failover component has no snapshot yet: no view to claim with
        feed = feed_for(self.root)
        try:
            page = await asyncio.to_thread(
                feed.read, tier, after=state.position, limit=PAGE, feed_id=state.feed_id
            )
        except ResyncNeededError:
            # Another feed incarnation or pruned entries: go through the whole feed
            # again; partitions already in the bucket cost one GET and one HEAD.
            state.position, state.feed_id = 0, None
            page = await asyncio.to_thread(feed.read, tier, after=0, limit=PAGE)
        latest: dict[str, Change] = {}
        for change in page.changes:
            if change.kind == "sealed" and change.manifest is not None:
                latest[change.partition] = change
        # Partition → manifest of what this page still has to bring into the bucket.
        pending = {p: Manifest.from_bytes(c.manifest or b"") for p, c in latest.items()}
        self._publish_pending(tier, list(pending.values()))
        done = 0
        for change in page.changes:
            if latest.get(change.partition) is not change:
                continue
            await self._commit_one(tier, pending[change.partition])
            done += 1
            del pending[change.partition]
            self._publish_pending(tier, list(pending.values()))
        state.feed_id = page.feed_id
        state.position = page.next_after
        await asyncio.to_thread(self._save_position, tier, page.feed_id, state.position)
        return done

    async def _commit_one(self, tier: ActivePassiveTier, manifest: Manifest) -> None:
        state = self.states[tier]
        directory = manifest.key.directory(self.root)
        try:
            local = await asyncio.to_thread(read_manifest, directory)
        except CryptorunError:
            return  # gone or re-sealed since: a later feed entry covers what is there now
        if local.content_hash != manifest.content_hash:
            return
        committer = self.committers[tier]
        epoch = self.epoch_provider(tier)
        primary = self.primary_provider(tier) or local.writer_region
        if state.token is None or (state.token.epoch, state.token.primary) != (epoch, primary):
            state.token = await committer.fence.claim(epoch, primary)
        try:
            report = await committer.commit(
                local,
                local_reader(directory),
                state.token,
                copy_source=self._copy_source(tier, primary),
                # What the validators found in the local copy travels with it: the
                # bucket's view of flagged rows is the disk's.
                sidecar=await asyncio.to_thread(read_local_sidecar, directory),
            )
        except FencedError:
            state.token = None  # claim again next time: the view may have moved on
            raise
        if not report.already:
            state.committed += 1
            if tier in self.bucket_held:
                # What the bucket holds is what a bucket-held tier serves as a source.
                await asyncio.to_thread(bucket_index(self.root, tier).record_sealed, local)

    def _copy_source(self, tier: ActivePassiveTier, primary: str) -> TierBucket | None:
        """The primary's bucket when a server-side copy from it is possible (same endpoint)."""
        if primary == self.ctx.config.region:
            return None
        backend = self.ctx.config.storage.sources.get(primary, {}).get(tier)
        if backend is None:
            return None
        source = self._sources.get((primary, tier))
        if source is None:
            source = TierBucket(tier, backend, metrics=self.ctx.metrics)
            self._sources[(primary, tier)] = source
        return source if self.buckets[tier].same_endpoint(source) else None

    def _publish_pending(self, tier: ActivePassiveTier, pending: Sequence[Manifest]) -> None:
        state = self.states[tier]
        state.pending_partitions = len(pending)
        state.pending_bytes = sum(m.total_bytes for m in pending)
        self.ctx.metrics.replication_bytes_pending.labels(
            tier=tier, region=self.ctx.config.region
        ).set(state.pending_bytes)

    # --- position -------------------------------------------------------------------------

    def _position_path(self, tier: str) -> Path:
        return self.root / POSITION_DIR / f"{tier}.json"

    def _load_position(self, tier: str) -> tuple[str | None, int]:
        with contextlib.suppress(FileNotFoundError, ValueError, KeyError, TypeError):
            data = json.loads(self._position_path(tier).read_bytes())
            return str(data["feed_id"]), int(data["position"])
        return None, 0

    def _save_position(self, tier: str, feed_id: str, position: int) -> None:
        path = self._position_path(tier)
        make_durable_dirs(path.parent)
        atomic_write_bytes(path, json.dumps({"feed_id": feed_id, "position": position}).encode())
