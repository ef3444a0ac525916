"""Bucket → disk: a peer's object-store tier as the file source of the replication executor.

A replica whose config names where a peer keeps a tier
(``[storage.sources.REGION.TIER]``) reads the files of that tier from the
peer's bucket instead of the peer's admin API: manifests and the change feed
still come from the peer daemon (it is the one that knows what is committed
and at which epoch), only the bytes come from the store. Everything after
that is the existing executor — resumable partials (ranged GETs from the kept
offset), xxh3-128 against the manifest, quarantine of corrupt copies,
validators, the fenced local commit — so the replica keeps a verified local
cache of the tier.

Error handling: a missing object is ``http`` (the source's manifest names a
file its bucket lacks); request failures past the retries of
:class:`~cryptorun_daemon.storage.object_store.TierBucket` are
``timeout`` or ``peer_unreachable`` (the downloader keeps its partial and
resumes). Resource handling: one streaming GET per open file, closed with the
context manager; memory is one chunk.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Final

from cryptorun_daemon.config import Config, ObjectStoreTier, Tier
from cryptorun_daemon.errors import ReplicationError
from cryptorun_daemon.storage.layout import object_key, parse_partition_path
from cryptorun_daemon.storage.object_store import ObjectStoreError, TierBucket, endpoints_match


def bucket_held_tiers(config: Config) -> dict[Tier, ObjectStoreTier]:
    """The tiers this region holds only in its bucket, with their bucket's config.

    A tier is bucket-held when ``[storage.tiers.T]`` names a bucket and some
    ``[storage.sources.REGION.T]`` is on another endpoint: its pull link then
    streams bucket → bucket and keeps no local copy
    (replication/bucket_executor.py), so what it holds is in its bucket
    index, and that is what it serves as a source (replication/bucket_serving.py).
    """
    held: dict[Tier, ObjectStoreTier] = {}
    for tier, mine in config.storage.tiers.items():
        for by_tier in config.storage.sources.values():
            theirs = by_tier.get(tier)
            if theirs is not None and not endpoints_match(mine, theirs):
                held[tier] = mine
    return held


def replication_failure(exc: ObjectStoreError) -> ReplicationError:
    """The replication failure (bounded reason) a request error past the retries stands for."""
    reason = "timeout" if exc.s3_code in ("timeout", "RequestTimeout") else "peer_unreachable"
    if exc.s3_code in ("NoSuchKey", "AccessDenied", "NoSuchBucket"):
        reason = "http"
    return ReplicationError(str(exc), reason=reason)


#: Largest piece one ranged read hands to the downloader (its write batch takes two).
#: Below the allocator's mmap threshold (runtime/allocator.py): the client's chunk
#: buffers are reused from the heap; at 1 MiB each was mapped, zeroed and faulted in
#: (a third of a bucket replica's page faults in bench/object_store.py).
PIECE: Final = 1 << 18


class BucketChunks:
    """The ``content`` of a :class:`BucketFileStream`: ``iter_any`` like aiohttp's reader."""

    def __init__(self, bucket: TierBucket, relative: str, offset: int) -> None:
        self._bucket = bucket
        self._relative = relative
        self._offset = offset

    async def iter_any(self) -> AsyncIterator[bytes]:
        """The object's bytes from ``offset`` on, in pieces of at most ``PIECE`` bytes."""
        try:
            async for piece in self._bucket.stream(
                self._relative, offset=self._offset, chunk=PIECE
            ):
                yield piece
        except ObjectStoreError as exc:
            raise replication_failure(exc) from exc


@dataclass
class BucketFileStream:
    """One open object, shaped like the HTTP transport's ``FileStream``."""

    offset: int
    etag: str | None
    content: BucketChunks


class BucketFileSource:
    """Reads ``region``'s files of one tier from its bucket (a ``FileSource``)."""

    def __init__(self, region: str, bucket: TierBucket) -> None:
        self.region = region
        self.bucket = bucket

    @contextlib.asynccontextmanager
    async def open_file(
        self,
        tier: Tier,
        partition: str,
        name: str,
        *,
        offset: int,
        expected_hash: str,
        reconcile_epoch: int | None = None,
    ) -> AsyncIterator[BucketFileStream]:
        """Stream one file from ``offset``; the executor verifies it against the manifest.

        The stream holds one of the source bucket's transfer slots
        (``concurrency``) while it is open, like every transfer of a tier.
        """
        relative = object_key(parse_partition_path(tier, partition), name)
        try:
            info = await self.bucket.head(relative)
        except ObjectStoreError as exc:
            raise replication_failure(exc) from exc
        if info is None:
            raise ReplicationError(
                f"{self.bucket.url}/{relative}: not in {self.region}'s bucket", reason="http"
            )
        # A bucket object never holds two versions spliced: a range from `offset`
        # of whatever is there now is hashed with the kept prefix and the whole
        # file compared with the manifest, so a replaced object is caught as corrupt.
        start = offset if offset <= info.size else 0
        async with self.bucket.slots:
            yield BucketFileStream(start, info.etag, BucketChunks(self.bucket, relative, start))
