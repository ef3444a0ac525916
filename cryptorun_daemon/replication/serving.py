"""The source's side of the wire: serve sealed partitions read-only.

``GET /v1/partitions?tier=&start=&end=`` lists manifests of sealed partitions
wholly inside the window; ``GET /v1/partitions/{tier}/{path}`` serves one file
listed in a sealed manifest (or the manifest itself) with ``sendfile``, Range
support, and ``ETag`` = the file's content hash from the manifest.

Hostile paths: the wire path is checked segment by segment against the layout
(:func:`resolve_partition_file`) before any filesystem call, so ``..``,
absolute paths, encoded separators and hidden names are 400; symlinks
anywhere under the root, unsealed partitions and files the manifest does not
list are 404. Nothing outside ``storage.root`` can be named, let alone read.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from aiohttp import hdrs, web

from cryptorun_daemon.admin.errors import json_error
from cryptorun_daemon.config import Tier
from cryptorun_daemon.errors import PathRejectedError, StorageError, UsageError
from cryptorun_daemon.replication.rules import TimeRange, parse_tier
from cryptorun_daemon.storage.catalog import Catalog
from cryptorun_daemon.storage.layout import MANIFEST_NAME, SUCCESS_MARKER, resolve_partition_file
from cryptorun_daemon.storage.manifest import Manifest, format_time, read_manifest

SEND_CHUNK = 4 << 20


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
    ) -> None:
        self.root = root
        self.region = region
        self.catalog = catalog
        self._epoch = epoch_provider
        self._now = now
        # Compact JSON per manifest, reused while the manifest is unchanged.
        self._json: dict[tuple[str, str, str, int], bytes] = {}

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
        epoch = self._epoch(tier)
        manifests = await asyncio.to_thread(
            self.catalog.sealed_manifests,
            tier,
            start=window.start if window else None,
            end=window.end if window else None,
            owner=(self.region, epoch),
        )
        if window is not None:
            manifests = [m for m in manifests if window.contains_span(m.key.start, m.key.end)]
        body = self._render(tier, epoch, window, manifests)
        return web.Response(body=body, content_type="application/json")

    def _render(
        self, tier: Tier, epoch: int, window: TimeRange | None, manifests: list[Manifest]
    ) -> bytes:
        cache: dict[tuple[str, str, str, int], bytes] = {}
        parts = []
        for manifest in manifests:
            ident = (
                f"{manifest.tier}/{manifest.partition}",
                manifest.content_hash,
                format_time(manifest.sealed_at),
                manifest.epoch,
            )
            raw = self._json.get(ident)
            if raw is None:
                raw = json.dumps(manifest.to_json(), separators=(",", ":")).encode()
            cache[ident] = raw
            parts.append(raw)
        # Keep only this tier's entries from before plus the fresh ones.
        self._json = {k: v for k, v in self._json.items() if not k[0].startswith(f"{tier}/")}
        self._json.update(cache)
        head = json.dumps(
            {
                "region": self.region,
                "tier": tier,
                "epoch": epoch,
                "now": format_time(self._now()),
                "window": str(window) if window else None,
                "count": len(parts),
            },
            separators=(",", ":"),
        ).encode()
        return head[:-1] + b',"partitions":[' + b",".join(parts) + b"]}"

    async def get_file(self, request: web.Request) -> web.StreamResponse:
        tier = parse_tier(request.match_info["tier"])
        path = request.match_info["path"]
        try:
            key, name, real = await asyncio.to_thread(
                resolve_partition_file, self.root, tier, path
            )
            directory = real.parent
            if not (directory / SUCCESS_MARKER).is_file():
                raise FileNotFoundError(path)
            manifest = await asyncio.to_thread(read_manifest, directory)
        except PathRejectedError:
            raise
        except (OSError, StorageError):
            return json_error(404, "not_found", f"no sealed partition file {tier}/{path}")
        if manifest.key != key:
            return json_error(404, "not_found", f"no sealed partition file {tier}/{path}")
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
