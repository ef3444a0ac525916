"""The source's side of the wire: serve sealed partitions read-only.

``GET /v1/partitions?tier=&start=&end=`` lists manifests of sealed partitions
wholly inside the window; ``GET /v1/partitions/{tier}/{path}`` serves one file
listed in a sealed manifest (or the manifest itself) with ``sendfile``, Range
support, and ``ETag`` = the file's content hash from the manifest.

Fencing (warm, cold): only the current primary serves as a replication
source. Anyone else answers file requests and ``purpose=source`` listings
(what replication links send) with 409 ``fenced`` (``serve_guard``, counted as
``cryptorun_fenced_total{operation="serve"}``); a listing without ``purpose``
is refused the same way by a demoted former primary, and answered as an
inventory by a region that never was primary. Explicit exceptions:

- ``purpose=inventory`` on the listing: what this region holds, for planning
  a copy *to* it (``simulate``); no file is ever served on that basis;
- ``reconcile_epoch=E`` on the listing and on file requests: rejoin
  reconciliation. Only partitions whose manifest epoch is ``<= E`` and that
  this region's fence history proves legitimate (sealed by that epoch's
  primary before the epoch ended) are listed or served, and only once this
  region has learned that epoch ``E`` ended (409 ``conflict`` before).

Hostile paths: the wire path is checked segment by segment against the layout
(:func:`resolve_partition_file`) before any filesystem call, so ``..``,
absolute paths, encoded separators and hidden names are 400; symlinks
anywhere under the root, unsealed partitions and files the manifest does not
list are 404. Nothing outside ``storage.root`` can be named, let alone read.

A tier this region holds only in its bucket (``bucket_held``,
:mod:`~cryptorun_daemon.replication.bucket_serving`): listings (window,
inventory and ``reconcile_epoch`` alike) add the partitions its bucket index
holds and this disk lacks, with their sealed manifests read from the bucket,
under the same window and fencing rules; a file not on this disk is served
from the bucket when a sealed manifest there lists it, and for
reconciliation only when that manifest is legitimate (409 ``fenced`` else).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from aiohttp import hdrs, web

from cryptorun_daemon.admin.errors import json_error
from cryptorun_daemon.config import Tier
from cryptorun_daemon.errors import ConflictError, PathRejectedError, StorageError, UsageError
from cryptorun_daemon.replication.bucket_serving import BucketHeldTiers
from cryptorun_daemon.replication.rules import TimeRange, parse_tier
from cryptorun_daemon.storage.catalog import MAX_CACHED_MANIFESTS, Catalog
from cryptorun_daemon.storage.layout import (
    MANIFEST_NAME,
    SUCCESS_MARKER,
    parse_partition_file,
    resolve_partition_file,
)
from cryptorun_daemon.storage.manifest import Manifest, read_manifest
from cryptorun_daemon.storage.write_fence import Fence, read_fence
from cryptorun_daemon.timefmt import format_rfc3339

SEND_CHUNK = 4 << 20

#: ``guard(tier, as_source=...)`` → ``None`` to answer, else ``(status, code, detail)``.
ServeGuard = Callable[..., tuple[int, str, str] | None]
#: ``primary(tier)`` → the region this daemon believes is primary (listed for clients).
PrimaryOf = Callable[[Tier], str | None]


class _ContentTaggedFileResponse(web.FileResponse):
    """``FileResponse`` (sendfile, Range) whose ETag is the manifest's content hash.

    aiohttp derives ETags from mtime and size; replicas need the content hash,
    which is what ``If-Range`` on a resumed download compares against.
    """

    def __init__(self, path: Path, content_hash: str) -> None:
        super().__init__(path, chunk_size=SEND_CHUNK)
        self._content_hash = content_hash

    @property  # the setter ignores aiohttp's mtime-size tag on purpose
    def etag(self) -> Any:
        return web.StreamResponse.etag.fget(self)  # type: ignore[attr-defined]

    @etag.setter
    def etag(self, value: Any) -> None:
        web.StreamResponse.etag.fset(self, self._content_hash)  # type: ignore[attr-defined]


class PartitionServer:
    """Request handlers for the two read-only partition endpoints.

    ``owner`` gives ``(region, epoch)`` for the tier, used to compute the
    manifest of a partition a foreign writer sealed with ``_SUCCESS`` only.
    """

    def __init__(
        self,
        *,
        root: Path,
        region: str,
        catalog: Catalog,
        epoch_provider: Callable[[Tier], int],
        now: Callable[[], datetime],
        serve_guard: ServeGuard | None = None,
        primary_of: PrimaryOf | None = None,
        bucket_held: BucketHeldTiers | None = None,
    ) -> None:
        self.root = root
        self.region = region
        self.catalog = catalog
        self._bucket_held = bucket_held
        self._epoch = epoch_provider
        self._now = now
        self._guard = serve_guard
        self._primary_of = primary_of
        # Compact JSON per manifest, reused while the manifest is unchanged (only
        # for listings of at most MAX_CACHED_MANIFESTS: a full listing of a long
        # history would otherwise stay in memory); renders run in worker
        # threads, one at a time under the lock.
        self._json: dict[tuple[str, str, str, int], bytes] = {}
        self._render_lock = threading.Lock()

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v1/partitions", self.list_partitions),
            web.get("/v1/partitions/{tier}/{path:.*}", self.get_file, allow_head=True),
        ]

    async def list_partitions(self, request: web.Request) -> web.Response:
        tier = parse_tier(request.query.get("tier", ""))
        start_text, end_text = request.query.get("start"), request.query.get("end")
        window: TimeRange | None = None
        if start_text or end_text:
            if not (start_text and end_text):
                raise UsageError("give both start and end, or neither")
            window = TimeRange.parse(f"{start_text}/{end_text}")
        purpose = request.query.get("purpose")
        if purpose not in (None, "source", "inventory"):
            raise UsageError("purpose must be source or inventory")
        reconcile = _reconcile_epoch(request)
        epoch = self._epoch(tier)
        fence: Fence | None = None
        if reconcile is not None:
            fence = await asyncio.to_thread(self._reconcile_fence, tier, reconcile)
        elif purpose != "inventory" and self._guard is not None:
            refusal = self._guard(tier, as_source=purpose == "source")
            if refusal is not None:
                return json_error(*refusal)
        # No primary known (no active-passive rule for the tier): serve as before.
        primary = (self._primary_of(tier) if self._primary_of is not None else None) or self.region
        # Only the serving primary computes manifests for foreign-sealed partitions.
        owner = (self.region, epoch) if primary == self.region and reconcile is None else None
        manifests = await asyncio.to_thread(
            self.catalog.sealed_manifests,
            tier,
            start=window.start if window else None,
            end=window.end if window else None,
            owner=owner,
        )
        if window is not None:
            manifests = [m for m in manifests if window.contains_span(m.key.start, m.key.end)]
        if self._bucket_held is not None and self._bucket_held.holds(tier):
            # What this region holds only in its bucket: indexed there, not on disk.
            from_bucket = await self._bucket_held.listed_manifests(
                tier,
                window=window,
                max_epoch=reconcile,
                on_disk=manifests,
            )
            manifests.extend(from_bucket)
        if fence is not None and reconcile is not None:
            manifests = [m for m in manifests if _reconcilable(fence, m, reconcile)]
        served_as = (
            "reconcile"
            if reconcile is not None
            else "source"
            if primary == self.region and purpose != "inventory"
            else "inventory"
        )
        # Grows with history: rendered in a worker thread, never on the loop.
        body = await asyncio.to_thread(
            self._render, tier, epoch, window, manifests, purpose=served_as
        )
        return web.Response(body=body, content_type="application/json")

    def _reconcile_fence(self, tier: Tier, epoch: int) -> Fence:
        """This root's fence, provided it knows that ``epoch`` ended (blocking).

        Error handling: :class:`ConflictError` (409) while it does not: this
        region cannot yet tell its legitimate old-epoch partitions from later
        writes, so it must not offer any.
        """
        fence = read_fence(self.root, tier)
        if fence is None or fence.epoch <= epoch:
            seen = fence.epoch if fence is not None else "none"
            raise ConflictError(
                f"{self.region} has not learned that {tier} epoch {epoch} ended (its fence "
                f"epoch is {seen}); reconciliation must wait until it has"
            )
        return fence

    def _render(
        self,
        tier: Tier,
        epoch: int,
        window: TimeRange | None,
        manifests: list[Manifest],
        *,
        purpose: str = "source",
    ) -> bytes:
        with self._render_lock:
            return self._render_locked(tier, epoch, window, manifests, purpose)

    def _render_locked(
        self,
        tier: Tier,
        epoch: int,
        window: TimeRange | None,
        manifests: list[Manifest],
        purpose: str,
    ) -> bytes:
        cache: dict[tuple[str, str, str, int], bytes] = {}
        parts = []
        for manifest in manifests:
            ident = (
                f"{manifest.tier}/{manifest.partition}",
                manifest.content_hash,
                format_rfc3339(manifest.sealed_at),
                manifest.epoch,
            )
            raw = self._json.get(ident)
            if raw is None:
                raw = json.dumps(manifest.to_json(), separators=(",", ":")).encode()
            cache[ident] = raw
            parts.append(raw)
        # Keep only this tier's entries from before plus the fresh ones.
        self._json = {k: v for k, v in self._json.items() if not k[0].startswith(f"{tier}/")}
        if len(cache) <= MAX_CACHED_MANIFESTS:
            self._json.update(cache)
        head = json.dumps(
            {
                "region": self.region,
                "tier": tier,
                "epoch": epoch,
                "primary": self._primary_of(tier) if self._primary_of is not None else None,
                "purpose": purpose,
                "now": format_rfc3339(self._now()),
                "window": str(window) if window else None,
                "count": len(parts),
            },
            separators=(",", ":"),
        ).encode()
        return head[:-1] + b',"partitions":[' + b",".join(parts) + b"]}"

    async def get_file(self, request: web.Request) -> web.StreamResponse:
        tier = parse_tier(request.match_info["tier"])
        path = request.match_info["path"]
        reconcile = _reconcile_epoch(request)
        fence: Fence | None = None
        if reconcile is not None:
            fence = await asyncio.to_thread(self._reconcile_fence, tier, reconcile)
        elif self._guard is not None:
            refusal = self._guard(tier, as_source=True)
            if refusal is not None:
                return json_error(*refusal)
        try:
            key, name, real = await asyncio.to_thread(resolve_partition_file, self.root, tier, path)
            directory = real.parent
            if not (directory / SUCCESS_MARKER).is_file():
                raise FileNotFoundError(path)
            manifest = await asyncio.to_thread(read_manifest, directory)
        except PathRejectedError:
            raise
        except (OSError, StorageError):
            if self._bucket_held is not None and self._bucket_held.holds(tier):
                # Not on this disk: a partition this region holds only in its bucket,
                # fenced like a disk partition before any byte is served.
                key, name = parse_partition_file(tier, path)
                held = await self._bucket_held.sealed_manifest(tier, key)
                if held is not None:
                    if fence is not None and reconcile is not None:
                        fenced = _reconcile_refusal(fence, held, reconcile)
                        if fenced is not None:
                            return fenced
                    served = await self._bucket_held.serve_file(request, tier, key, name, held)
                    if served is not None:
                        return served
            return json_error(404, "not_found", f"no sealed partition file {tier}/{path}")
        if manifest.key != key:
            return json_error(404, "not_found", f"no sealed partition file {tier}/{path}")
        if fence is not None and reconcile is not None:
            fenced = _reconcile_refusal(fence, manifest, reconcile)
            if fenced is not None:
                return fenced
        if name == MANIFEST_NAME:
            content_hash = manifest.content_hash
        else:
            entry = manifest.file(name)
            if entry is None:
                return json_error(404, "not_found", f"{name} is not listed in the manifest")
            content_hash = entry.hash
        response = _ContentTaggedFileResponse(real, content_hash)
        if_range = request.headers.get(hdrs.IF_RANGE)
        if if_range is not None and if_range.strip().strip('"') != content_hash:
            # The client holds a prefix of another version: send the whole file.
            stripped = request.clone(
                headers={
                    k: v
                    for k, v in request.headers.items()
                    if k.lower() not in ("range", "if-range")
                }
            )
            await response.prepare(stripped)
        return response


def _reconcile_epoch(request: web.Request) -> int | None:
    text = request.query.get("reconcile_epoch")
    if text is None:
        return None
    try:
        epoch = int(text)
    except ValueError:
        raise UsageError("reconcile_epoch must be an integer >= 1") from None
    if epoch < 1:
        raise UsageError("reconcile_epoch must be an integer >= 1")
    return epoch


def _reconcile_refusal(fence: Fence, manifest: Manifest, epoch: int) -> web.Response | None:
    """409 ``fenced`` unless ``manifest`` may be served for reconciliation at ``epoch``."""
    if _reconcilable(fence, manifest, epoch):
        return None
    return json_error(
        409,
        "fenced",
        f"{manifest.tier}/{manifest.partition} (epoch {manifest.epoch}) is not a legitimate "
        f"partition of epoch <= {epoch}; it is not served for reconciliation",
    )


def _reconcilable(fence: Fence, manifest: Manifest, epoch: int) -> bool:
    """Sealed at an epoch ``<= epoch`` by its primary, before that epoch ended."""
    return manifest.epoch <= epoch and fence.classify(manifest) == "history"
