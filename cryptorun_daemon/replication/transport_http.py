"""The destination's side of the wire: pull listings and files from a peer daemon.

One :class:`HttpPeer` per source region, sharing the daemon's client session
(connection reuse). Every failure becomes a :class:`ReplicationError` whose
``reason`` is a bounded metric label: ``peer_unreachable`` (connect/reset),
``timeout``, ``http`` (an unexpected status or body).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp

from cryptorun_daemon.config import Tier
from cryptorun_daemon.errors import ReplicationError, ResyncNeededError, StorageError
from cryptorun_daemon.replication.planner import PeerHealth
from cryptorun_daemon.replication.rules import TimeRange
from cryptorun_daemon.storage.catalog import MAX_CACHED_MANIFESTS
from cryptorun_daemon.storage.manifest import Manifest
from cryptorun_daemon.timefmt import format_rfc3339

#: Read buffer of one file download (bytes); see :meth:`HttpPeer.open_file`.
FILE_READ_BUFSIZE = 1 << 18

#: Why a listing is asked for: to pull from the peer, or to see what it holds.
Purpose = Literal["source", "inventory"]


@dataclass(frozen=True)
class Listing:
    """A peer's sealed partitions of one tier, plus its view of the tier's epoch."""

    region: str
    tier: Tier
    epoch: int
    manifests: tuple[Manifest, ...]
    primary: str | None = None


@dataclass(frozen=True)
class FeedBatch:
    """One page of a peer's change feed: positions seen and the sealed manifests among them."""

    feed_id: str
    epoch: int
    head: int
    next_after: int
    positions: tuple[int, ...]
    sealed: tuple[tuple[int, Manifest], ...]


@dataclass(frozen=True)
class DayDigests:
    """A peer's per-day digests of a tier, and its feed head taken before them."""

    feed_id: str
    head: int
    epoch: int
    days: dict[str, tuple[int, str]]


@dataclass
class FileStream:
    """An open file download. ``offset`` is where ``content`` starts in the file."""

    offset: int
    etag: str | None
    content: aiohttp.StreamReader


def _failure(exc: BaseException, what: str) -> ReplicationError:
    if isinstance(exc, TimeoutError):
        return ReplicationError(f"{what}: timed out", reason="timeout")
    return ReplicationError(f"{what}: {exc or type(exc).__name__}", reason="peer_unreachable")


class HttpPeer:
    """Pulls from one peer's ``/v1/partitions`` endpoints.

    Error handling: see the module docstring; a listing with a malformed
    manifest fails as ``http`` (the peer is wrong, not the network).
    Resource handling: the session belongs to the caller; at most
    ``concurrency`` file downloads run at once per peer.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        region: str,
        base_url: str,
        *,
        headers: Mapping[str, str],
        request_timeout: float = 30.0,
        concurrency: int = 4,
    ) -> None:
        self.session = session
        self.region = region
        self.base_url = base_url.rstrip("/")
        self._headers = dict(headers)
        self._timeout = aiohttp.ClientTimeout(total=request_timeout)
        # Large files may take longer than request_timeout in total; what must
        # not stall is connecting and each read.
        self._stream_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=request_timeout, sock_read=request_timeout
        )
        self._slots = asyncio.Semaphore(concurrency)
        # Manifests parsed before, keyed by what identifies them, so a
        # no-change pass over thousands of partitions skips re-validation.
        self._parsed: dict[tuple[str, str, str, int], Manifest] = {}

    async def probe(self) -> PeerHealth:
        """Is the peer's daemon alive? (``GET /healthz``)."""
        url = f"{self.base_url}/healthz"
        try:
            async with self.session.get(url, timeout=self._timeout) as resp:
                if resp.status == 200:
                    return PeerHealth(True)
                return PeerHealth(False, f"peer {self.region} /healthz answered {resp.status}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            return PeerHealth(False, f"peer {self.region} unreachable: {exc or type(exc).__name__}")

    async def list_partitions(
        self,
        tier: Tier,
        window: TimeRange | None = None,
        *,
        purpose: Purpose = "source",
        reconcile_epoch: int | None = None,
    ) -> Listing:
        """The peer's sealed partitions of ``tier`` (wholly inside ``window`` if given).

        ``purpose="source"`` asks the peer to act as a replication source (a
        fenced peer refuses: reason ``fenced``); ``"inventory"`` only asks what
        it holds (for planning a copy *to* it). ``reconcile_epoch=E`` asks a
        fenced old primary for the partitions it legitimately sealed up to
        epoch ``E`` (rejoin reconciliation).
        """
        params: dict[str, str] = {"tier": tier}
        if window is not None:
            params["start"] = format_rfc3339(window.start)
            params["end"] = format_rfc3339(window.end)
        if reconcile_epoch is None:
            params["purpose"] = purpose
        else:
            params["reconcile_epoch"] = str(reconcile_epoch)
        url = f"{self.base_url}/v1/partitions"
        try:
            async with self.session.get(
                url, params=params, headers=self._headers, timeout=self._timeout
            ) as resp:
                if resp.status != 200:
                    body = (await resp.text())[:300]
                    raise ReplicationError(
                        f"GET {url} answered {resp.status}: {body}",
                        reason="fenced" if resp.status == 409 and '"fenced"' in body else "http",
                    )
                raw = await resp.read()
        except ReplicationError:
            raise
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _failure(exc, f"listing {tier} partitions of {self.region}") from exc
        # A listing grows with history: parsed in a worker thread, never on the loop.
        try:
            data = await asyncio.to_thread(json.loads, raw)
        except ValueError as exc:
            raise ReplicationError(
                f"GET {url} returned invalid JSON: {exc}", reason="http"
            ) from exc
        return await asyncio.to_thread(self._parse_listing, tier, data)

    def _parse_listing(self, tier: Tier, data: Any) -> Listing:
        try:
            items = data["partitions"]
            epoch = int(data["epoch"])
            region = str(data["region"])
            primary = data.get("primary")
            parsed: dict[tuple[str, str, str, int], Manifest] = {}
            manifests = []
            for item in items:
                ident = (
                    str(item["partition"]),
                    str(item["content_hash"]),
                    str(item["sealed_at"]),
                    int(item["epoch"]),
                )
                manifest = self._parsed.get(ident) or Manifest.from_json(item)
                if manifest.tier != tier:
                    raise StorageError(f"listing for {tier} holds a {manifest.tier} manifest")
                parsed[ident] = manifest
                manifests.append(manifest)
        except (KeyError, TypeError, ValueError, StorageError) as exc:
            raise ReplicationError(
                f"peer {self.region} sent an invalid listing: {exc}", reason="http"
            ) from exc
        # Kept for the next listing only when small: a full listing of a long
        # history would keep every manifest in memory for good.
        self._parsed = parsed if len(parsed) <= MAX_CACHED_MANIFESTS else {}
        return Listing(
            region=region,
            tier=tier,
            epoch=epoch,
            manifests=tuple(manifests),
            primary=str(primary) if primary is not None else None,
        )

    # --- change feed and digests (see feed_serving.py) ----------------------------

    async def changes(
        self, tier: Tier, *, after: int, limit: int, feed_id: str | None, wait: float = 0.0
    ) -> FeedBatch:
        """One page of the peer's change feed of ``tier`` after ``after``.

        Error handling: :class:`ResyncNeededError` when the peer cannot answer
        from that position (the caller must repair by digest); otherwise as
        :meth:`list_partitions`.
        """
        params = {"tier": tier, "after": str(after), "limit": str(limit)}
        if feed_id is not None:
            params["feed"] = feed_id
        if wait > 0:
            params["wait"] = str(wait)
        data = await self._get_json("/v1/partitions/changes", params, f"{tier} changes")
        return await asyncio.to_thread(self._parse_changes, tier, data)

    async def digest_days(self, tier: Tier) -> DayDigests:
        """The peer's per-day digests of ``tier`` and its feed head taken before them."""
        data = await self._get_json("/v1/partitions/digest", {"tier": tier}, f"{tier} digests")
        try:
            return DayDigests(
                feed_id=str(data["feed_id"]),
                head=int(data["head"]),
                epoch=int(data["epoch"]),
                days={str(d): (int(v[0]), str(v[1])) for d, v in data["days"].items()},
            )
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise ReplicationError(
                f"peer {self.region} sent invalid digests: {exc}", reason="http"
            ) from exc

    async def digest_hours(self, tier: Tier, day: str) -> dict[int, tuple[int, str]]:
        """The peer's per-hour digests of one day (cold: the single bucket ``-1``)."""
        data = await self._get_json(
            "/v1/partitions/digest", {"tier": tier, "day": day}, f"{tier} {day} digests"
        )
        try:
            return {int(h): (int(v[0]), str(v[1])) for h, v in data["hours"].items()}
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise ReplicationError(
                f"peer {self.region} sent invalid digests: {exc}", reason="http"
            ) from exc

    async def digest_partitions(self, tier: Tier, day: str, hour: int) -> list[Manifest]:
        """The manifests of the peer's committed partitions in one hour (cold: ``-1``) of a day."""
        data = await self._get_json(
            "/v1/partitions/digest",
            {"tier": tier, "day": day, "hour": str(hour)},
            f"{tier} {day} hour {hour} partitions",
        )
        return await asyncio.to_thread(self._parse_manifests, tier, data.get("partitions"))

    async def _get_json(self, path: str, params: dict[str, str], what: str) -> Any:
        url = f"{self.base_url}{path}"
        try:
            async with self.session.get(
                url, params=params, headers=self._headers, timeout=self._timeout
            ) as resp:
                raw = await resp.read()
                if resp.status != 200:
                    body = raw[:300].decode(errors="replace")
                    if resp.status == 409 and '"resync_needed"' in body:
                        raise ResyncNeededError(f"{self.region}: {body}")
                    raise ReplicationError(
                        f"GET {url} answered {resp.status}: {body}",
                        reason="fenced" if resp.status == 409 and '"fenced"' in body else "http",
                    )
        except ReplicationError:
            raise
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _failure(exc, f"fetching {what} of {self.region}") from exc
        try:
            return await asyncio.to_thread(json.loads, raw)
        except ValueError as exc:
            raise ReplicationError(
                f"GET {url} returned invalid JSON: {exc}", reason="http"
            ) from exc

    def _parse_manifests(self, tier: Tier, items: Any) -> list[Manifest]:
        try:
            manifests = [Manifest.from_json(item) for item in items]
        except (KeyError, TypeError, ValueError, StorageError) as exc:
            raise ReplicationError(
                f"peer {self.region} sent an invalid manifest: {exc}", reason="http"
            ) from exc
        for manifest in manifests:
            if manifest.tier != tier:
                raise ReplicationError(
                    f"peer {self.region} sent a {manifest.tier} manifest for {tier}", reason="http"
                )
        return manifests

    def _parse_changes(self, tier: Tier, data: Any) -> FeedBatch:
        try:
            sealed: list[tuple[int, Manifest]] = []
            positions = []
            for item in data["changes"]:
                position = int(item["position"])
                positions.append(position)
                if item["kind"] == "sealed" and item.get("manifest") is not None:
                    sealed.extend(
                        (position, m) for m in self._parse_manifests(tier, [item["manifest"]])
                    )
            return FeedBatch(
                feed_id=str(data["feed_id"]),
                epoch=int(data["epoch"]),
                head=int(data["head"]),
                next_after=int(data["next_after"]),
                positions=tuple(positions),
                sealed=tuple(sealed),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ReplicationError(
                f"peer {self.region} sent an invalid change page: {exc}", reason="http"
            ) from exc

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
    ) -> AsyncIterator[FileStream]:
        """Stream one file from ``offset`` (``Range``), holding a download slot.

        ``If-Range`` carries the expected content hash: if the peer's copy has a
        different hash it answers 200 with the whole file, and the caller
        restarts from byte 0 instead of splicing two versions.
        ``reconcile_epoch`` asks a fenced peer for an old-epoch partition.
        """
        url = f"{self.base_url}/v1/partitions/{tier}/{partition}/{name}"
        if reconcile_epoch is not None:
            url += f"?reconcile_epoch={reconcile_epoch}"
        headers = dict(self._headers)
        if offset > 0:
            headers["Range"] = f"bytes={offset}-"
            headers["If-Range"] = f'"{expected_hash}"'
        async with self._slots:
            try:
                async with self.session.get(
                    url,
                    headers=headers,
                    timeout=self._stream_timeout,
                    auto_decompress=False,
                    # Flow control pauses the socket above twice this: larger than
                    # the 64 KiB default so a download wakes the loop less often,
                    # small enough that concurrent downloads stay bounded (at 1 MiB,
                    # eight downloads held up to 16 MiB of received bytes).
                    read_bufsize=FILE_READ_BUFSIZE,
                ) as resp:
                    if resp.status not in (200, 206):
                        body = (await resp.text())[:300]
                        raise ReplicationError(
                            f"GET {url} answered {resp.status}: {body}", reason="http"
                        )
                    start = offset if resp.status == 206 else 0
                    etag = resp.headers.get("ETag", "").strip('"') or None
                    yield FileStream(offset=start, etag=etag, content=resp.content)
            except ReplicationError:
                raise
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise _failure(exc, f"downloading {tier}/{partition}/{name}") from exc
