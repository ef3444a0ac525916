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

**Validation.** With step validators configured (the daemon always has
them), the files are not streamed object → object but spooled: each one is
downloaded from the source bucket into ``{root}/_state/bucket_spool/{tier}/
{partition}/`` by the disk executor's resumable, hash-verified downloader
(a corrupt copy quarantined as on disk), the same validators as the disk
path judge the spooled files, and only then are they uploaded from the spool
(hashed again as they go up). The consequences are the disk's: a file-level
failure (wrong schema, unreadable) is quarantined in
``{root}/_quarantine/{tier}/{region}/{partition}/`` with its ``.error.json``,
counted by check, tier and region, and the partition is not committed (its
content remembered as refused); flagged rows are listed in the
``_quarantine.json`` sidecar, committed beside the data in the bucket. Each
source byte still crosses the network once; memory stays one download chunk,
a few 256 KiB pieces per part in flight (parts are hashed and sent straight
from the spool file, :class:`~cryptorun_daemon.storage.file_region.FileRegion`)
and the validators' decoded tables (at most
``replication.max_bucket_validations`` partitions at a time, one by default:
a validation thread keeps up with a bucket transfer, and each one in flight
holds a decoded file). At most ``replication.bucket_spool_partitions`` (2)
partitions are being downloaded into the spool or judged there at once
(:attr:`BucketMirrorExecutor.spooling`; their downloads also take the source
bucket's transfer slots): a step's partitions go through the spool a few at a
time, each downloaded at the source's full rate and uploading as soon as it
is judged, instead of every partition downloading at once and none judged
and uploading until most had arrived (docs/BENCHMARKS.md, object store, fifth
round). The spool is emptied
after the commit or the refusal; an interrupted download resumes from it.
Without validators (benchmarks) the files stream object → object.
Same-endpoint sources keep the disk executor plus a server-side copy
(:mod:`cryptorun_daemon.storage.bucket_sync`).
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from cryptorun_daemon.config import (
    ActivePassiveTier,
    ReplicationConfig,
    Tier,
    is_active_passive,
)
from cryptorun_daemon.errors import FencedError, ReplicationError
from cryptorun_daemon.replication.download import ByteCounter
from cryptorun_daemon.replication.executor import WarmColdExecutor
from cryptorun_daemon.replication.verify import StepValidator
from cryptorun_daemon.runtime.tasks import gather_or_cancel
from cryptorun_daemon.storage.bucket_commit import (
    BucketCommitter,
    CommitReport,
    FenceToken,
    FileReader,
    bucket_reader,
    local_reader,
)
from cryptorun_daemon.storage.bucket_source import BucketFileSource, replication_failure
from cryptorun_daemon.storage.change_feed import ChangeFeed, bucket_index
from cryptorun_daemon.storage.layout import SPOOL_DIR
from cryptorun_daemon.storage.manifest import Manifest
from cryptorun_daemon.storage.object_store import ObjectStoreError, TierBucket
from cryptorun_daemon.storage.quarantine_sidecar import read_local_sidecar

if TYPE_CHECKING:
    from cryptorun_daemon.metrics import Metrics

log = structlog.get_logger("cryptorun.replication")

__all__ = ["BucketMirrorExecutor", "bucket_index", "streams_across_endpoints"]


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
    the buckets' connection pools live as long as the link; with validators,
    the spool holds the files of the partitions in flight until their commit.
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
        validators: Sequence[StepValidator] = (),
        strict: bool = False,
        max_validations: int = ReplicationConfig.max_bucket_validations,
        spool_partitions: int = ReplicationConfig.bucket_spool_partitions,
    ) -> None:
        super().__init__(
            root=root,
            region=region,
            source=source,
            metrics=metrics,
            retry_attempts=retry_attempts,
            validators=validators,
            strict=strict,
            max_validations=max_validations,
        )
        self.source_bucket = source.bucket
        self.target = BucketCommitter(target, root, metrics)
        self.index = index
        self._epoch = epoch_provider
        self._primary = primary_provider
        self._token: FenceToken | None = None
        #: Partitions being downloaded into the spool or judged there at once
        #: (``replication.bucket_spool_partitions``; module docstring).
        self.spool_partitions = spool_partitions
        self.spooling = asyncio.Semaphore(spool_partitions)

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
        spool = manifest.key.directory(self.root / SPOOL_DIR)
        try:
            token = await self._claim(tier, manifest)
            if self.validators and await self._already_held(manifest):
                report = CommitReport(committed=True, already=True)
            else:
                reader, sidecar = await self._judged_reader(manifest, spool, counter)
                report = await self.target.commit(manifest, reader, token, sidecar=sidecar)
        except FencedError as exc:
            self._token = None  # claim again next time: the view may have moved on
            raise ReplicationError(str(exc), reason="fenced") from exc
        except ObjectStoreError as exc:
            raise replication_failure(exc) from exc
        except ReplicationError as exc:
            if exc.reason == "validation":
                # Refused content: its bad files are in quarantine, the rest is not kept.
                await self._run(shutil.rmtree, spool, True)
            raise
        await self._run(shutil.rmtree, spool, True)
        if not self.validators:
            counter.bytes += report.sent  # streamed: the spool's downloader counts otherwise
        if report.sent and not self.validators:
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
        return counter.bytes

    async def _already_held(self, manifest: Manifest) -> bool:
        """Whether this bucket holds ``manifest``'s content sealed (nothing to fetch or judge)."""
        held, _etag = await self.target.committed_manifest(manifest)
        return held is not None and held.content_hash == manifest.content_hash

    async def _judged_reader(
        self, manifest: Manifest, spool: Path, counter: ByteCounter
    ) -> tuple[FileReader, bytes | None]:
        """Where the commit reads the files from, and the sidecar to commit with them.

        Without validators: the source bucket itself (streamed). With them: the
        files spooled under ``spool`` and judged there (module docstring).
        Error handling: :class:`ReplicationError` ``validation`` (a file
        quarantined), ``corrupt`` and the network reasons from the downloader.
        """
        if not self.validators:
            return bucket_reader(self.source_bucket), None
        async with self.spooling:
            await self._run(lambda: spool.mkdir(parents=True, exist_ok=True))
            await gather_or_cancel(
                self.downloader.fetch_file(manifest, spool, entry, counter)
                for entry in manifest.files
            )
            await self.verifier.validate(manifest, spool)
            sidecar = await self._run(read_local_sidecar, spool)
        return local_reader(spool), sidecar
