"""Bucket → bucket across endpoints: a replica's steps streamed object → object.

A replica whose tier lives in a bucket (``[storage.tiers.T]``) and whose
source keeps that tier in a bucket on another endpoint
(``[storage.sources.P.T]``, a different ``endpoint_url`` or region) runs its
pull link with :class:`BucketMirrorExecutor` instead of the disk executor:
each partition goes from the source's objects to this region's bucket through
the daemon, never through a local copy. The link, its feed following,
anti-entropy, retry set and lag are unchanged; only the partition step differs:

1. **fence policy** — this root's disk fence refuses manifests of a fenced
   writer, as on disk (quarantined as ``fenced``, never applied);
2. **claim** — this region's bucket fence object is claimed at its current
   view of the tier's epoch and primary (:class:`BucketFence`);
3. **stream** — every file is read from the source bucket with ranged GETs
   into one part buffer at a time and uploaded through the resumable multipart
   path (:class:`~cryptorun_daemon.storage.bucket_commit.BucketCommitter`):
   memory stays ``part_buffers × part_size`` per tier; every byte is hashed
   (xxh3-128) in order and each part carries ``x-amz-checksum-sha256``;
4. **commit** — only when the whole file hashes to the manifest's value is the
   upload completed; then ``_manifest.json`` (conditional), the fence object
   (``If-Match``) and ``_SUCCESS``. A mismatch aborts the upload, is counted in
   ``cryptorun_data_consistency_errors_total{check="corrupt"}`` and fails the
   partition with reason ``corrupt`` (retried next pass, never committed).

What the bucket holds is indexed in a change feed of its own
(``{root}/_state/bucket_index/{tier}/``), which the link plans and compares
digests against; it is not this root's disk feed, so the disk scrub does not
judge it and the disk → bucket worker does not upload it again.

Step validators are not run on this path (they read local files); the
bytes are still verified against the manifest the primary's validators passed.
Same-endpoint sources keep the disk executor plus a server-side copy
(:mod:`cryptorun_daemon.storage.bucket_sync`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Final

import structlog

from cryptorun_daemon.config import ActivePassiveTier, Tier, is_active_passive
from cryptorun_daemon.errors import FencedError, ReplicationError
from cryptorun_daemon.replication.download import ByteCounter
from cryptorun_daemon.replication.executor import WarmColdExecutor
from cryptorun_daemon.storage.bucket_commit import BucketCommitter, FenceToken, bucket_reader
from cryptorun_daemon.storage.bucket_source import BucketFileSource, replication_failure
from cryptorun_daemon.storage.change_feed import ChangeFeed, feed_for
from cryptorun_daemon.storage.manifest import Manifest
from cryptorun_daemon.storage.object_store import ObjectStoreError, TierBucket

if TYPE_CHECKING:
    from cryptorun_daemon.metrics import Metrics

log = structlog.get_logger("cryptorun.replication")

BUCKET_INDEX_DIR: Final = "_state/bucket_index"


def bucket_index(root: Path, tier: Tier) -> ChangeFeed:
    """The change feed indexing what ``tier``'s bucket holds (see the module docstring)."""
    return feed_for(root / BUCKET_INDEX_DIR / tier)


def streams_across_endpoints(target: TierBucket | None, source: TierBucket | None) -> bool:
    """Whether a link from ``source`` into ``target`` streams object → object through us."""
    return target is not None and source is not None and not target.same_endpoint(source)


class BucketMirrorExecutor(WarmColdExecutor):
    """Runs steps from a peer's bucket into this region's bucket (module docstring).

    Error handling: per partition, as :class:`WarmColdExecutor`: ``fenced``
    (disk fence policy, or the store refused the commit), ``corrupt``
    (bytes do not hash to the manifest), ``timeout`` / ``peer_unreachable``
    / ``http`` (requests past the retries of :class:`TierBucket`); an
    interrupted multipart upload resumes on the next pass. Resource handling:
    the buckets' connection pools live as long as the link; no local files.
    """

    def __init__(
        self,
        *,
        root: Path,
        region: str,
        source: BucketFileSource,
        target: TierBucket,
        metrics: Metrics,
        epoch_provider: Callable[[Tier], int],
        primary_provider: Callable[[Tier], str | None],
        index: ChangeFeed,
        retry_attempts: int = 3,
        strict: bool = False,
        max_validations: int = 2,
    ) -> None:
        super().__init__(
            root=root,
            region=region,
            source=source,
            metrics=metrics,
            retry_attempts=retry_attempts,
            strict=strict,
            max_validations=max_validations,
        )
        self.source_bucket = source.bucket
        self.target = BucketCommitter(target, root, metrics)
        self.index = index
        self._epoch = epoch_provider
        self._primary = primary_provider
        self._token: FenceToken | None = None

    async def _claim(self, tier: ActivePassiveTier, manifest: Manifest) -> FenceToken:
        epoch = self._epoch(tier)
        primary = self._primary(tier) or manifest.writer_region
        token = self._token
        if token is None or (token.epoch, token.primary) != (epoch, primary):
            token = self._token = await self.target.fence.claim(epoch, primary)
        return token

    async def replicate_partition(
        self, manifest: Manifest, counter: ByteCounter | None = None
    ) -> int:
        """Stream one partition into this region's bucket and commit it there; return bytes sent.

        Error handling: see the class docstring.
        """
        counter = counter if counter is not None else ByteCounter()
        tier = manifest.tier
        self.verifier.check_not_refused(manifest)
        await asyncio.to_thread(self.policy.check_apply, manifest)
        if not is_active_passive(tier):
            raise ReplicationError(f"{tier} has no object-store tier", reason="io")
        try:
            token = await self._claim(tier, manifest)
            report = await self.target.commit(manifest, bucket_reader(self.source_bucket), token)
        except FencedError as exc:
            self._token = None  # claim again next time: the view may have moved on
            raise ReplicationError(str(exc), reason="fenced") from exc
        except ObjectStoreError as exc:
            raise replication_failure(exc) from exc
        counter.bytes += report.sent
        if report.sent:
            self.metrics.replication_bytes_total.labels(
                tier=tier, **{"from": self.source.region, "to": self.region}
            ).inc(report.sent)
        await asyncio.to_thread(self.index.record_sealed, manifest)
        log.info(
            "partition streamed bucket to bucket",
            tier=tier,
            partition=manifest.partition,
            source=self.source.region,
            to=self.target.bucket.url,
            bytes=report.sent,
            reused=report.reused,
            already=report.already,
        )
        return report.sent
