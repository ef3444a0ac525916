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
* ``GET /v1/partitions?tier=&start=&end=`` (the window listing: sources,
  inventories, ``simulate``) and its ``reconcile_epoch=E`` form list what is
  on disk plus the partitions the bucket index holds and this disk lacks,
  with their sealed manifests read from the bucket (:meth:`listed_manifests`):
  the same wholly-inside-the-window rule as on disk, and for reconciliation
  only index entries of epoch ``<= E`` are looked at (the caller then keeps
  those the fence history proves legitimate, as for disk partitions);
* ``GET /v1/partitions/{tier}/{path}`` serves a file (or the manifest) of a
  sealed partition from the bucket when this disk lacks it: streamed in
  bounded chunks, ``ETag`` the manifest's content hash, ``Range: bytes=N-``
  answered 206 from ``N`` unless ``If-Range`` names another version (then 200
  with the whole file), exactly as the disk server answers. With
  ``reconcile_epoch`` the caller checks the bucket's manifest against the
  fence before any byte is served (409 ``fenced`` otherwise).

The fencing of serving (only the current primary serves as a source, and
reconciliation only what the fence history proves legitimate) is the
callers' guard, unchanged. A tier is bucket-held when ``[storage.tiers.T]``
names a bucket and some ``[storage.sources.REGION.T]`` is on another endpoint
(the configuration that makes this region's pull link stream bucket →
bucket); other bucket tiers keep a local copy of everything and serve from disk.

Cost of a listing: the index is read in a worker thread, and each
bucket-only partition in it costs two requests (manifest GET, ``_SUCCESS``
HEAD), at most :data:`LIST_CONCURRENCY` partitions at a time, unless its
manifest was read before and the index still records that content hash (the
most recently listed :data:`MAX_CACHED_MANIFESTS` are kept: reconciliation
lists the whole history on every pass).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Final

from aiohttp import hdrs, web

from cryptorun_daemon.config import Config, Tier, is_active_passive
from cryptorun_daemon.errors import StorageError
from cryptorun_daemon.metrics import Metrics
from cryptorun_daemon.replication.rules import TimeRange
from cryptorun_daemon.storage.bucket_source import bucket_held_tiers
from cryptorun_daemon.storage.change_feed import ChangeFeed
from cryptorun_daemon.storage.layout import (
    MANIFEST_NAME,
    SUCCESS_MARKER,
    PartitionKey,
    object_key,
    parse_partition_path,
)
from cryptorun_daemon.storage.manifest import Manifest
from cryptorun_daemon.storage.object_store import ObjectMissingError, TierBucket

#: Largest piece streamed to a client per write (the bucket stream's chunk).
SERVE_CHUNK = 1 << 20
#: Bucket-only partitions whose manifests a listing reads at once (two requests each).
LIST_CONCURRENCY: Final = 8
#: Bucket manifests kept between listings (the least recently listed go first), as many
#: as the disk catalog keeps.
MAX_CACHED_MANIFESTS: Final = 10_000


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
        # (tier, partition path) → the sealed manifest last read from the bucket,
        # least recently used first; valid while the index records its content
        # hash (a re-seal changes the hash, a removal drops the index row).
        # Touched on the event loop only.
        self._manifests: OrderedDict[tuple[Tier, str], Manifest] = OrderedDict()

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

    async def listed_manifests(
        self,
        tier: Tier,
        *,
        window: TimeRange | None,
        max_epoch: int | None,
        on_disk: Sequence[Manifest],
    ) -> list[Manifest]:
        """Sealed bucket manifests of the indexed partitions a listing adds to the disk's.

        The candidates are the bucket index's partitions of ``tier`` that
        ``on_disk`` (the disk's manifests the listing holds already) lacks,
        that lie wholly inside ``window`` when one is given, and whose
        indexed epoch is at most ``max_epoch`` when one is given (the index
        records the epoch of the manifest it indexed, so nothing a
        reconciliation could accept is skipped). A candidate whose bucket
        manifest is missing or unsealed (``_SUCCESS`` absent), or whose path
        is not a partition path, is left out; the manifests come back in
        partition-path order. A manifest read before is reused without a
        request while the index still records its content hash.

        Error handling: request failures past the retries raise
        :class:`~cryptorun_daemon.storage.object_store.ObjectStoreError`
        (the listing answers 5xx and the client retries). Resource handling:
        at most :data:`LIST_CONCURRENCY` partitions read at once, each in its
        own task of one task group (a failure cancels the rest).
        """
        candidates = await asyncio.to_thread(self._candidates, tier, window, max_epoch, on_disk)
        found: dict[str, Manifest] = {}
        missing: list[PartitionKey] = []
        for key, content_hash in candidates:
            cached = self._manifests.get((tier, key.relpath))
            if cached is not None and cached.content_hash == content_hash:
                self._manifests.move_to_end((tier, key.relpath))
                found[key.relpath] = cached
            else:
                missing.append(key)
        for i in range(0, len(missing), LIST_CONCURRENCY):
            async with asyncio.TaskGroup() as group:
                batch = [
                    group.create_task(self.sealed_manifest(tier, key))
                    for key in missing[i : i + LIST_CONCURRENCY]
                ]
            for manifest in (task.result() for task in batch):
                if manifest is not None:
                    found[manifest.partition] = manifest
                    self._remember(tier, manifest)
        return [found[key.relpath] for key, _ in candidates if key.relpath in found]

    def _remember(self, tier: Tier, manifest: Manifest) -> None:
        self._manifests[(tier, manifest.partition)] = manifest
        self._manifests.move_to_end((tier, manifest.partition))
        while len(self._manifests) > MAX_CACHED_MANIFESTS:
            self._manifests.popitem(last=False)

    def _candidates(
        self,
        tier: Tier,
        window: TimeRange | None,
        max_epoch: int | None,
        on_disk: Sequence[Manifest],
    ) -> list[tuple[PartitionKey, str]]:
        """The index's partitions a listing must read from the bucket, with their indexed
        content hashes, in partition-path order (blocking: SQLite)."""
        index = self._index_of(tier)
        skip = {m.partition for m in on_disk}
        first = last = None
        if window is not None:
            # Days are compared as ISO text; a day starting at or after the end is out.
            first = window.start.date().isoformat()
            last = (window.end - _INSTANT).date().isoformat()
        keys: list[tuple[PartitionKey, str]] = []
        for day in list(index.held_days(tier)):
            if first is not None and last is not None and not first <= day <= last:
                continue
            for held in index.held(tier, day):
                if held.partition in skip or (max_epoch is not None and held.epoch > max_epoch):
                    continue
                try:
                    key = parse_partition_path(tier, held.partition)
                except StorageError:
                    continue  # not a partition path: nothing a client could ask for
                if window is None or window.contains_span(key.start, key.end):
                    keys.append((key, held.content_hash))
        keys.sort(key=lambda k: k[0].relpath)
        return keys

    async def serve_file(
        self, request: web.Request, tier: Tier, key: PartitionKey, name: str, manifest: Manifest
    ) -> web.StreamResponse | None:
        """Answer a file request from the bucket; ``None`` when ``manifest`` lists no such file.

        ``manifest`` is ``key``'s sealed manifest in the bucket
        (:meth:`sealed_manifest`), already admitted by the caller's fencing.
        Error handling: request failures past the retries raise
        :class:`~cryptorun_daemon.storage.object_store.ObjectStoreError`
        before the response starts; one mid-stream ends the response early
        (the client's hash check fails and it resumes). Resource handling:
        one chunk in memory at a time.
        """
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


# The smallest step back from a window's end: the last instant inside it.
_INSTANT: Final = timedelta(microseconds=1)


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
