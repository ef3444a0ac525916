"""Serving the partitions a region holds only in its bucket, as a source like any other.

A region whose warm or cold tier lives in a bucket filled across endpoints by
the bucket → bucket executor (:mod:`~cryptorun_daemon.replication.bucket_executor`)
holds those partitions nowhere on its disk: what it holds is indexed in the
bucket index (``{root}/_state/bucket_index/{tier}/``), not in its disk feed.
After a failover such a region is the tier's primary, and its peers replicate
from it like from any primary. For these *bucket-held* tiers:

* ``/v1/partitions/changes`` and ``/v1/partitions/digest`` answer from the
  bucket index (which also records every partition the disk → bucket worker
  commits, so partitions sealed here after the promotion are listed too);
* the manifests the digest answers carry are read from disk when the
  partition is there, else from the bucket (only sealed ones: ``_SUCCESS``
  present);
* ``GET /v1/partitions/{tier}/{path}`` serves a file (or the manifest) of a
  sealed partition from the bucket when this disk lacks it: streamed in
  bounded chunks, ``ETag`` the manifest's content hash, ``Range: bytes=N-``
  answered 206 from ``N`` unless ``If-Range`` names another version (then 200
  with the whole file), exactly as the disk server answers.

The fencing of serving (only the current primary serves as a source) is the
callers' guard, unchanged. A tier is bucket-held when ``[storage.tiers.T]``
names a bucket and some ``[storage.sources.REGION.T]`` is on another endpoint
(the configuration that makes this region's pull link stream bucket →
bucket); other bucket tiers keep a local copy of everything and serve from disk.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from aiohttp import hdrs, web

from cryptorun_daemon.config import Config, Tier, is_active_passive
from cryptorun_daemon.metrics import Metrics
from cryptorun_daemon.storage.bucket_source import bucket_held_tiers
from cryptorun_daemon.storage.change_feed import ChangeFeed
from cryptorun_daemon.storage.layout import (
    MANIFEST_NAME,
    SUCCESS_MARKER,
    PartitionKey,
    object_key,
)
from cryptorun_daemon.storage.manifest import Manifest
from cryptorun_daemon.storage.object_store import ObjectMissingError, TierBucket

#: Largest piece streamed to a client per write (the bucket stream's chunk).
SERVE_CHUNK = 1 << 20


class BucketHeldTiers:
    """The bucket-held tiers of one region, their index and their bucket.

    Resource handling: one :class:`TierBucket` (connection pool) per tier, as
    long as the daemon.
    """

    def __init__(
        self,
        *,
        root: Path,
        config: Config,
        metrics: Metrics,
        index_of: Callable[[Tier], ChangeFeed],
    ) -> None:
        self.root = root
        self.buckets: dict[Tier, TierBucket] = {
            tier: TierBucket(tier, backend, metrics=metrics)
            for tier, backend in bucket_held_tiers(config).items()
            if is_active_passive(tier)
        }
        self._index_of = index_of

    def holds(self, tier: Tier) -> bool:
        """Whether ``tier`` is served from the bucket index and the bucket."""
        return tier in self.buckets

    def feed(self, tier: Tier, disk_feed: ChangeFeed) -> ChangeFeed:
        """The feed to answer ``tier``'s changes and digests from."""
        return self._index_of(tier) if self.holds(tier) else disk_feed

    async def sealed_manifest(self, tier: Tier, key: PartitionKey) -> Manifest | None:
        """The manifest of ``key`` sealed in the bucket (``_SUCCESS`` present), else ``None``.

        Error handling: request failures past the retries raise
        :class:`~cryptorun_daemon.storage.object_store.ObjectStoreError`.
        """
        bucket = self.buckets[tier]
        try:
            raw, _etag = await bucket.get(object_key(key, MANIFEST_NAME))
        except ObjectMissingError:
            return None
        if await bucket.head(object_key(key, SUCCESS_MARKER)) is None:
            return None  # an unfinished commit: nobody reads it
        manifest = Manifest.from_bytes(raw)
        return manifest if manifest.key == key else None

    async def serve_file(
        self, request: web.Request, tier: Tier, key: PartitionKey, name: str
    ) -> web.StreamResponse | None:
        """Answer a file request from the bucket; ``None`` when the bucket has no such file.

        Error handling: request failures past the retries raise
        :class:`~cryptorun_daemon.storage.object_store.ObjectStoreError`
        before the response starts; one mid-stream ends the response early
        (the client's hash check fails and it resumes). Resource handling:
        one chunk in memory at a time.
        """
        manifest = await self.sealed_manifest(tier, key)
        if manifest is None:
            return None
        if name == MANIFEST_NAME:
            # Small: answered whole, tagged like the disk server tags it.
            response = web.Response(body=manifest.to_bytes(), content_type="application/json")
            response.etag = manifest.content_hash
            return response
        entry = manifest.file(name)
        if entry is None:
            return None
        size = entry.bytes
        offset = min(_range_start(request, entry.hash), size)
        streamed = web.StreamResponse(status=206 if offset else 200)
        streamed.etag = entry.hash
        streamed.content_type = "application/octet-stream"
        streamed.content_length = size - offset
        if offset:
            streamed.headers[hdrs.CONTENT_RANGE] = f"bytes {offset}-{size - 1}/{size}"
        await streamed.prepare(request)
        bucket = self.buckets[tier]
        async for piece in bucket.stream(object_key(key, name), offset=offset, chunk=SERVE_CHUNK):
            await streamed.write(piece)
        await streamed.write_eof()
        return streamed


def _range_start(request: web.Request, content_hash: str) -> int:
    """The offset a ``Range: bytes=N-`` asks for; 0 when absent, malformed or ``If-Range`` differs.

    Only the open-ended form the replicas send is honoured; anything else
    gets the whole file (a valid answer to any Range request).
    """
    text = request.headers.get(hdrs.RANGE, "")
    if_range = request.headers.get(hdrs.IF_RANGE)
    if if_range is not None and if_range.strip().strip('"') != content_hash:
        return 0
    if not text.startswith("bytes=") or not text.endswith("-"):
        return 0
    start = text[len("bytes=") : -1]
    return int(start) if start.isdigit() else 0
