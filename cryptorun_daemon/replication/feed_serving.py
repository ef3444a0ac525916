"""The source's side of the change feed and of anti-entropy: two read-only endpoints.

``GET /v1/partitions/changes?tier=T&after=P&limit=N[&feed=ID][&wait=S]``
answers one bounded page (at most :data:`MAX_PAGE` entries) of the tier's
change feed after position ``P``, oldest first, with the feed's id, head and
oldest kept position. ``feed=ID`` names the incarnation ``P`` belongs to;
``wait=S`` (at most :data:`MAX_WAIT` seconds) holds an empty answer until an
entry arrives or ``S`` passes (a long poll). A position the feed cannot answer
from (another incarnation, beyond the head, pruned) is 409 ``resync_needed``:
the reader must repair by digest, never skip.

``GET /v1/partitions/digest?tier=T[&day=D[&hour=H]]`` answers the per-day
digests of the tier (with the feed head taken *before* them, so a reader that
repairs from the digests and then follows the feed from that head misses
nothing), or the per-hour digests of day ``D`` (cold: one bucket, hour -1),
or the manifests of the partitions of hour ``H`` of day ``D``.

For a tier this region holds only in its bucket (``bucket_held``,
:mod:`~cryptorun_daemon.replication.bucket_serving`) both answer from the
bucket index, and manifests not on disk are read from the bucket.

Both are answered only by the tier's current primary (``serve_guard``, as for
source listings): anyone else answers 409 ``fenced``. Every SQLite call and
every rendering runs in a worker thread; what grows with history (the days
of a tier) is rendered off the event loop, and nothing is O(partitions).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Final

from aiohttp import web

from cryptorun_daemon.admin.errors import json_error
from cryptorun_daemon.config import ACTIVE_PASSIVE_TIERS, Tier
from cryptorun_daemon.errors import StorageError, UsageError
from cryptorun_daemon.replication.bucket_serving import BucketHeldTiers
from cryptorun_daemon.replication.rules import parse_tier
from cryptorun_daemon.replication.serving import PrimaryOf, ServeGuard
from cryptorun_daemon.storage.change_feed import ChangeFeed, FeedPage
from cryptorun_daemon.storage.layout import parse_partition_path

#: Most entries one page answers (about 1 MB of manifests).
MAX_PAGE: Final = 1000
DEFAULT_PAGE: Final = 500
#: Longest long poll, well under the replicas' request timeout.
MAX_WAIT: Final = 10.0
# How often a long poll looks at the feed again (one indexed SQLite query).
_POLL: Final = 0.1


class FeedServer:
    """Handlers for ``/v1/partitions/changes`` and ``/v1/partitions/digest``."""

    def __init__(
        self,
        *,
        root: Path,
        region: str,
        feed: ChangeFeed,
        epoch_provider: Callable[[Tier], int],
        serve_guard: ServeGuard | None = None,
        primary_of: PrimaryOf | None = None,
        bucket_held: BucketHeldTiers | None = None,
    ) -> None:
        self.root = root
        self.region = region
        self.feed = feed
        self._bucket_held = bucket_held
        self._epoch = epoch_provider
        self._guard = serve_guard
        self._primary_of = primary_of

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v1/partitions/changes", self.changes),
            web.get("/v1/partitions/digest", self.digest),
        ]

    def _tier(self, request: web.Request) -> tuple[Tier, web.Response | None]:
        tier = parse_tier(request.query.get("tier", ""))
        if tier not in ACTIVE_PASSIVE_TIERS:
            raise UsageError("the change feed covers the warm and cold tiers")
        refusal = self._guard(tier, as_source=True) if self._guard is not None else None
        return tier, json_error(*refusal) if refusal is not None else None

    def _feed(self, tier: Tier) -> ChangeFeed:
        """The disk feed, or the bucket index of a tier held only in the bucket."""
        if self._bucket_held is None:
            return self.feed
        return self._bucket_held.feed(tier, self.feed)

    def _head(self, tier: Tier) -> dict[str, object]:
        return {
            "region": self.region,
            "tier": tier,
            "epoch": self._epoch(tier),
            "primary": self._primary_of(tier) if self._primary_of is not None else None,
        }

    async def changes(self, request: web.Request) -> web.Response:
        tier, refusal = self._tier(request)
        if refusal is not None:
            return refusal
        after = _int(request, "after", 0, minimum=0)
        limit = min(_int(request, "limit", DEFAULT_PAGE, minimum=1), MAX_PAGE)
        wait = min(_float(request, "wait", 0.0), MAX_WAIT)
        feed_id = request.query.get("feed") or None
        deadline = time.monotonic() + wait
        while True:
            page = await asyncio.to_thread(
                self._feed(tier).read, tier, after=after, limit=limit, feed_id=feed_id
            )
            if page.changes or time.monotonic() >= deadline:
                break
            await asyncio.sleep(_POLL)
        body = await asyncio.to_thread(_render_page, self._head(tier), page)
        return web.Response(body=body, content_type="application/json")

    async def digest(self, request: web.Request) -> web.Response:
        tier, refusal = self._tier(request)
        if refusal is not None:
            return refusal
        day_text = request.query.get("day")
        doc = self._head(tier)
        if day_text is None:
            # The head first: every change after it is in the feed past it.
            feed = self._feed(tier)
            doc["feed_id"] = await asyncio.to_thread(lambda: feed.feed_id)
            doc["head"] = await asyncio.to_thread(feed.head)
            days = await asyncio.to_thread(feed.day_digests, tier)
            doc["days"] = {d: [c, h] for d, (c, h) in sorted(days.items())}
        else:
            day = _day(day_text)
            hour_text = request.query.get("hour")
            doc["day"] = day
            if hour_text is None:
                hours = await asyncio.to_thread(self._feed(tier).hour_digests, tier, day)
                doc["hours"] = {str(h): [c, d] for h, (c, d) in sorted(hours.items())}
            else:
                hour = _int(request, "hour", -1, minimum=-1)
                if hour > 23:
                    raise UsageError("hour must be -1 (cold) or 0..23")
                doc["hour"] = hour
                raw = await self._manifests(tier, day, hour)
                body = await asyncio.to_thread(_render_with_manifests, doc, raw)
                return web.Response(body=body, content_type="application/json")
        body = await asyncio.to_thread(lambda: json.dumps(doc, separators=(",", ":")).encode())
        return web.Response(body=body, content_type="application/json")

    async def _manifests(self, tier: Tier, day: str, hour: int) -> list[bytes]:
        """The manifest bytes of one digest bucket's committed partitions.

        Read from disk in a worker thread; for a tier held only in the object
        store, a partition not on disk is read from the bucket (sealed only).
        A partition the index holds but whose manifest cannot be read is left
        out: the next scrub (or anti-entropy pass) records it as lost.
        Error handling: bucket request failures past the retries propagate
        (the request answers 5xx and the replica retries).
        """
        feed = self._feed(tier)
        held = await asyncio.to_thread(feed.held, tier, day, hour)
        found = await asyncio.to_thread(self._disk_manifests, tier, [h.partition for h in held])
        bucket = self._bucket_held
        if bucket is None or not bucket.holds(tier):
            return [raw for raw in found if raw is not None]
        out = []
        for partition, on_disk in zip((h.partition for h in held), found, strict=True):
            if on_disk is not None:
                out.append(on_disk)
                continue
            manifest = await bucket.sealed_manifest(tier, parse_partition_path(tier, partition))
            if manifest is not None:
                out.append(manifest.to_bytes())
        return out

    def _disk_manifests(self, tier: Tier, partitions: list[str]) -> list[bytes | None]:
        """The manifest bytes on disk of each partition, ``None`` where unreadable (blocking)."""
        found: list[bytes | None] = []
        for partition in partitions:
            try:
                key = parse_partition_path(tier, partition)
                found.append((key.directory(self.root) / "_manifest.json").read_bytes())
            except (OSError, StorageError):
                found.append(None)
        return found


def _render_page(head: dict[str, object], page: FeedPage) -> bytes:
    doc = {
        **head,
        "feed_id": page.feed_id,
        "head": page.head,
        "oldest": page.oldest,
        "next_after": page.next_after,
        "count": len(page.changes),
    }
    parts = []
    for change in page.changes:
        entry = json.dumps(
            {
                "position": change.position,
                "partition": change.partition,
                "kind": change.kind,
                "content_hash": change.content_hash,
                "epoch": change.epoch,
                "recorded_at": change.recorded_at,
            },
            separators=(",", ":"),
        ).encode()
        if change.manifest is not None:
            entry = entry[:-1] + b',"manifest":' + change.manifest.strip() + b"}"
        parts.append(entry)
    return json.dumps(doc, separators=(",", ":")).encode()[:-1] + (
        b',"changes":[' + b",".join(parts) + b"]}"
    )


def _render_with_manifests(doc: dict[str, object], manifests: list[bytes]) -> bytes:
    body = json.dumps({**doc, "count": len(manifests)}, separators=(",", ":")).encode()
    return body[:-1] + b',"partitions":[' + b",".join(m.strip() for m in manifests) + b"]}"


def _int(request: web.Request, name: str, default: int, *, minimum: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"{name} must be an integer >= {minimum}") from None
    if value < minimum:
        raise UsageError(f"{name} must be an integer >= {minimum}")
    return value


def _float(request: web.Request, name: str, default: float) -> float:
    text = request.query.get(name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{name} must be a number of seconds >= 0") from None
    if not value >= 0:
        raise UsageError(f"{name} must be a number of seconds >= 0")
    return value


def _day(text: str) -> str:
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError:
        raise UsageError(f"day must be YYYY-MM-DD, not {text!r}") from None
