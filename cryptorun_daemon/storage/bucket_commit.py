"""Verified, fenced commits of sealed partitions into an object-store tier.

The same protocol as on disk (docs/WARM_COLD.md#commit-protocol-executor),
with the store itself as the arbiter of who may write:

1. **fence** — the tier's fence object (``_state/fence/{tier}.json`` below the
   prefix, :func:`~cryptorun_daemon.storage.layout.fence_object_key`) holds
   ``{"epoch", "primary"}``. :meth:`BucketFence.claim` creates it with
   ``If-None-Match: *`` or advances it with ``If-Match: <etag>``; a writer whose
   epoch is older than the object's is refused (:class:`FencedError`).
2. **data** — every file is read from its source (local disk, another
   bucket), hashed while it goes up and compared with the manifest; large
   files go through resumable multipart uploads
   (:mod:`cryptorun_daemon.storage.multipart`). A mismatch is counted in
   ``cryptorun_data_consistency_errors_total{check="corrupt"}`` and the
   partition is not committed (a single PUT is never sent, a multipart upload
   is aborted).
3. **commit point** — the row-level quarantine sidecar (``_quarantine.json``,
   when the validators flagged rows) goes beside the data; ``_manifest.json``
   is written with ``If-None-Match: *`` (new) or ``If-Match`` (replacing
   another version, whose ``_SUCCESS`` is removed first so no reader pairs
   the old marker with the new manifest);
   then the fence object is rewritten with ``If-Match`` of the etag the claim
   saw — if a newer primary advanced it meanwhile the store answers 412 and
   nothing more is written; last ``_SUCCESS`` with ``If-None-Match: *``.

The residual window: S3 has no multi-object transaction, so a marker whose
fence confirmation was accepted can still land just after a promotion (one
request's time). Replicas and reconciliation still judge every manifest by its
epoch, as on disk.

Error handling: :class:`FencedError` (stale epoch, fence moved),
:class:`~cryptorun_daemon.errors.ReplicationError` ``corrupt`` on a hash
mismatch, :class:`ObjectStoreError` for request failures past the retries.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

import structlog

from cryptorun_daemon.errors import FencedError, ReplicationError, StorageError
from cryptorun_daemon.runtime.tasks import gather_or_cancel
from cryptorun_daemon.storage.file_region import FileRegion
from cryptorun_daemon.storage.layout import (
    MANIFEST_NAME,
    SUCCESS_MARKER,
    fence_object_key,
    object_key,
)
from cryptorun_daemon.storage.manifest import FileEntry, Manifest, format_hash, new_hasher
from cryptorun_daemon.storage.multipart import MultipartUploader, UploadCorruptError
from cryptorun_daemon.storage.object_store import (
    ConditionFailedError,
    ObjectMissingError,
    TierBucket,
)
from cryptorun_daemon.storage.quarantine_sidecar import SIDECAR_NAME

if TYPE_CHECKING:
    from cryptorun_daemon.metrics import Metrics

log = structlog.get_logger("cryptorun.object_store")

#: Reads ``length`` bytes at ``offset`` of one partition file (from disk or a bucket).
ReadRange = Callable[[int, int], Awaitable[bytes | bytearray]]
#: ``(manifest, file) → reader`` for the files of a partition being committed.
FileReader = Callable[[Manifest, FileEntry], ReadRange]

_PROBE_KEY: Final = "_state/probe/conditional-write"


@dataclass(frozen=True)
class FenceToken:
    """A claim on a tier's fence object: valid while the object's etag is still ``etag``."""

    tier: str
    epoch: int
    primary: str
    etag: str | None


class BucketFence:
    """The tier's fence object (see the module docstring)."""

    def __init__(self, bucket: TierBucket, metrics: Metrics | None = None) -> None:
        self.bucket = bucket
        self.metrics = metrics
        self.key = fence_object_key(bucket.tier)

    async def read(self) -> tuple[int, str, str | None] | None:
        """``(epoch, primary, etag)`` of the fence object, ``None`` when there is none."""
        try:
            body, etag = await self.bucket.get(self.key)
        except ObjectMissingError:
            return None
        try:
            data = json.loads(body)
            return int(data["epoch"]), str(data["primary"]), etag
        except (ValueError, KeyError, TypeError) as exc:
            raise StorageError(f"{self.bucket.url}/{self.key}: invalid fence object") from exc

    @staticmethod
    def _body(epoch: int, primary: str) -> bytes:
        return json.dumps({"epoch": epoch, "primary": primary}, sort_keys=True).encode()

    def _refuse(self, message: str) -> FencedError:
        if self.metrics is not None:
            self.metrics.fenced_total.labels(tier=self.bucket.tier, operation="seal").inc()
        return FencedError(message)

    async def claim(self, epoch: int, primary: str) -> FenceToken:
        """Make the fence say ``(epoch, primary)`` unless it already says a newer epoch.

        Error handling: :class:`FencedError` when the object holds a newer
        epoch, or this epoch with another primary.
        """
        while True:
            current = await self.read()
            if current is None:
                try:
                    etag = await self.bucket.put(
                        self.key, self._body(epoch, primary), mode="create"
                    )
                except ConditionFailedError:
                    continue  # someone created it meanwhile: judge what they wrote
                return FenceToken(self.bucket.tier, epoch, primary, etag)
            held_epoch, held_primary, etag = current
            if held_epoch > epoch or (held_epoch == epoch and held_primary != primary):
                raise self._refuse(
                    f"{self.bucket.url}: fence object holds epoch {held_epoch} "
                    f"({held_primary}); {primary} at epoch {epoch} may not write"
                )
            if held_epoch == epoch:
                return FenceToken(self.bucket.tier, epoch, primary, etag)
            try:
                etag = await self.bucket.put(
                    self.key, self._body(epoch, primary), if_match=etag or "*"
                )
            except ConditionFailedError:
                continue  # it changed under us: read and judge again
            log.info("bucket fence advanced", tier=self.bucket.tier, epoch=epoch, primary=primary)
            return FenceToken(self.bucket.tier, epoch, primary, etag)

    async def confirm(self, token: FenceToken) -> FenceToken:
        """Rewrite the fence object with ``If-Match: token.etag``: the store says we still hold it.

        A sibling commit of the same claim may have rewritten it (same body);
        then the check is repeated with the new etag. Error handling:
        :class:`FencedError` when a newer epoch (or another primary) took it.
        """
        while True:
            try:
                etag = await self.bucket.put(
                    self.key, self._body(token.epoch, token.primary), if_match=token.etag or "*"
                )
            except ConditionFailedError:
                current = await self.read()
                if current is not None and current[:2] == (token.epoch, token.primary):
                    token = FenceToken(token.tier, token.epoch, token.primary, current[2])
                    continue
                held = f"epoch {current[0]} ({current[1]})" if current else "no fence"
                raise self._refuse(
                    f"{self.bucket.url}: the store refused the commit of {token.primary} at "
                    f"epoch {token.epoch}: the fence object now holds {held}"
                ) from None
            return FenceToken(token.tier, token.epoch, token.primary, etag)


async def enforces_conditional_writes(bucket: TierBucket) -> bool:
    """Whether the store refuses a second ``If-None-Match: *`` write and a stale ``If-Match``.

    Writes a probe object (then deletes it). A store that accepts either write
    cannot fence at the write (docs/OPERATIONS.md#object-storage-tiers).
    """
    key = f"{_PROBE_KEY}-{os.getpid()}-{id(bucket):x}"
    try:
        etag = await bucket.put(key, b"probe", mode="create")
        try:
            await bucket.put(key, b"probe", mode="create")
        except ConditionFailedError:
            pass
        else:
            return False
        stale = '"00000000000000000000000000000000"' if etag != '"0"' else '"1"'
        try:
            await bucket.put(key, b"probe-2", if_match=stale)
        except ConditionFailedError:
            return True
        return False
    finally:
        await bucket.delete(key)


class LocalRange:
    """A :data:`ReadRange` over one local file that can also hand out its parts as regions.

    Called, it reads a range into memory (single PUTs); :meth:`region` gives a
    multipart upload each part as a :class:`FileRegion` sent from the page
    cache, so no part buffer is filled.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    async def __call__(self, offset: int, length: int) -> bytes | bytearray:
        return await asyncio.to_thread(read_file_range, self.path, offset, length)

    def region(self, offset: int, length: int) -> FileRegion:
        """``length`` bytes from ``offset`` as a request body (opens a descriptor: blocking)."""
        return FileRegion(self.path, offset, length)


def local_reader(directory: Path) -> FileReader:
    """Read partition files from a local partition directory."""

    def reader(manifest: Manifest, entry: FileEntry) -> ReadRange:
        return LocalRange(directory / entry.name)

    return reader


def read_file_range(path: Path, offset: int, length: int) -> bytearray:
    """Up to ``length`` bytes of ``path`` at ``offset``, read straight into one buffer.

    ``readinto`` one ``bytearray``: no intermediate copy (single PUTs; a
    multipart part of a local file is sent from the file itself, see
    :class:`LocalRange`).
    """
    buffer = bytearray(length)
    with path.open("rb", buffering=0) as handle:
        handle.seek(offset)
        got = handle.readinto(buffer)
    if got < length:
        del buffer[got:]  # a short file: the uploader names the short read
    return buffer


def bucket_reader(source: TierBucket) -> FileReader:
    """Read partition files from another object-store tier (ranged GETs, streamed)."""

    def reader(manifest: Manifest, entry: FileEntry) -> ReadRange:
        relative = object_key(manifest.key, entry.name)

        async def read(offset: int, length: int) -> bytes | bytearray:
            # One ranged GET per part, retried whole: the part arrives in one buffer,
            # with no Python loop over pieces and no second copy.
            return await source.get_range(relative, offset, length)

        return read

    return reader


@dataclass
class CommitReport:
    """What one partition commit did."""

    committed: bool
    sent: int = 0
    reused: int = 0
    already: bool = False


class BucketCommitter:
    """Commits sealed partitions into one object-store tier (see the module docstring)."""

    def __init__(self, bucket: TierBucket, storage_root: Path, metrics: Metrics) -> None:
        self.bucket = bucket
        self.metrics = metrics
        self.fence = BucketFence(bucket, metrics)
        self.uploader = MultipartUploader(bucket, storage_root)

    async def committed_manifest(self, manifest: Manifest) -> tuple[Manifest | None, str | None]:
        """The manifest the bucket holds for ``manifest``'s partition (if sealed) and its etag."""
        try:
            raw, etag = await self.bucket.get(object_key(manifest.key, MANIFEST_NAME))
        except ObjectMissingError:
            return None, None
        held = Manifest.from_bytes(raw)
        if await self.bucket.head(object_key(manifest.key, SUCCESS_MARKER)) is None:
            return None, etag  # a manifest without _SUCCESS: an unfinished commit
        return held, etag

    async def commit(
        self,
        manifest: Manifest,
        read_file: FileReader,
        token: FenceToken,
        *,
        copy_source: TierBucket | None = None,
        sidecar: bytes | None = None,
    ) -> CommitReport:
        """Bring ``manifest``'s partition into the bucket and seal it there.

        ``token`` comes from :meth:`BucketFence.claim` (the writer's view of
        the tier's epoch and primary). ``copy_source``: a bucket on the same
        endpoint holding the same partition; its files are copied server-side
        (no bytes through the daemon) and then read back and hashed here.
        ``sidecar``: the partition's row-level quarantine sidecar
        (``_quarantine.json``, written by the step validators) — stored beside
        the data before the commit point, as on disk; without one, a sidecar
        left by an earlier version is removed, so the bucket never pairs
        findings with files they do not describe. Re-committing identical
        content writes nothing.
        """
        held, manifest_etag = await self.committed_manifest(manifest)
        if held is not None and held.content_hash == manifest.content_hash:
            return CommitReport(committed=True, already=True)
        report = CommitReport(committed=False)
        results = await gather_or_cancel(
            self._copy_file(manifest, entry, copy_source)
            if copy_source is not None
            else self._upload_file(manifest, entry, read_file(manifest, entry))
            for entry in manifest.files
        )
        for sent, reused in results:
            report.sent += sent
            report.reused += reused
        manifest_key = object_key(manifest.key, MANIFEST_NAME)
        success_key = object_key(manifest.key, SUCCESS_MARKER)
        sidecar_key = object_key(manifest.key, SIDECAR_NAME)
        if manifest_etag is not None:
            # Another version (or an unfinished commit): never pair its marker with ours.
            await self.bucket.delete(success_key)
        if sidecar is not None:
            await self.bucket.put(sidecar_key, sidecar)
        else:
            await self.bucket.delete(sidecar_key)
        if manifest_etag is not None:
            await self.bucket.put(manifest_key, manifest.to_bytes(), if_match=manifest_etag)
        else:
            await self.bucket.put(manifest_key, manifest.to_bytes(), mode="create")
        await self.fence.confirm(token)
        try:
            await self.bucket.put(success_key, b"", mode="create")
        except ConditionFailedError:
            pass  # a retried commit that already wrote it: the marker is all it says
        report.committed = True
        log.info(
            "partition committed to bucket",
            tier=manifest.tier,
            partition=manifest.partition,
            url=self.bucket.url,
            bytes=report.sent,
        )
        return report

    async def _copy_file(
        self, manifest: Manifest, entry: FileEntry, source: TierBucket
    ) -> tuple[int, int]:
        """Server-side copy of one file, then verified by reading it back; ``(0, 0)`` sent."""
        relative = object_key(manifest.key, entry.name)
        async with self.bucket.slots:
            await self.bucket.copy_from(source, relative)
            hasher = new_hasher()
            size = 0
            async for piece in self.bucket.stream(relative):
                size += len(piece)
                await asyncio.to_thread(hasher.update, piece)
            got = format_hash(hasher.hexdigest())
            if size == entry.bytes and got == entry.hash:
                return 0, 0
            # Never leave a copy that does not match its manifest where readers look.
            await self.bucket.delete(relative)
            raise self._corrupt(manifest, entry, UploadCorruptError("copy", got=got, size=size))

    def _corrupt(
        self, manifest: Manifest, entry: FileEntry, exc: UploadCorruptError
    ) -> ReplicationError:
        """Count and log a mismatch; the error the commit fails with (reason ``corrupt``)."""
        self.metrics.data_consistency_errors_total.labels(check="corrupt").inc()
        log.error(
            "corrupt source file not committed",
            tier=manifest.tier,
            file=f"{manifest.partition}/{entry.name}",
            expected=entry.hash,
            got=exc.got,
        )
        return ReplicationError(
            f"{manifest.tier}/{manifest.partition}/{entry.name}: source bytes hash to "
            f"{exc.got} ({exc.size} bytes), manifest says {entry.hash} "
            f"({entry.bytes} bytes)",
            reason="corrupt",
        )

    async def _upload_file(
        self, manifest: Manifest, entry: FileEntry, read: ReadRange
    ) -> tuple[int, int]:
        """Upload one file verified against ``entry``; return ``(sent, reused)`` bytes."""
        relative = object_key(manifest.key, entry.name)
        async with self.bucket.slots:
            try:
                if entry.bytes >= self.bucket.config.multipart_threshold:
                    report = await self.uploader.upload(
                        relative,
                        size=entry.bytes,
                        content_hash=entry.hash,
                        read=read,
                        regions=read.region if isinstance(read, LocalRange) else None,
                    )
                    return report.sent, report.reused
                data = await read(0, entry.bytes)
                hasher = new_hasher()
                await asyncio.to_thread(hasher.update, data)
                got = format_hash(hasher.hexdigest())
                if len(data) != entry.bytes or got != entry.hash:
                    raise UploadCorruptError(
                        f"{relative}: {len(data)} bytes hash to {got}",
                        got=got,
                        size=len(data),
                    )
                await self.bucket.put(relative, data)
                return len(data), 0
            except UploadCorruptError as exc:
                raise self._corrupt(manifest, entry, exc) from exc
