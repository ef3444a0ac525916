"""Resumable, verified multipart uploads into an object-store tier.

``obstore`` uploads large objects in parts but exposes no way to list the
parts of an unfinished upload, so an upload cut by ``kill -9`` could only
start over. This module drives the S3 multipart calls itself through
``botocore`` (the maintained AWS client; we never sign requests ourselves):

1. the upload id, size, manifest hash and part size are saved when the upload
   starts, in ``{storage.root}/_state/multipart/{tier}/{digest of key}.json``
   (durably, before any part is sent);
2. a restarted upload of the same object (same size and manifest hash) asks
   the store for the parts it holds (``ListParts``, the store's truth: no
   per-part record of ours is needed or kept) and uploads only the missing ones;
3. every byte is hashed (xxh3-128) in order while it goes up; the finished
   parts of a resumed upload are read again and hashed, not sent again. Only
   when the whole object hashes to the manifest's value is the upload
   completed; otherwise it is aborted and nothing is visible under the key;
4. each part carries ``x-amz-checksum-sha256``, computed here from the same
   read as the xxh3-128 (botocore does not read the part again), so a store
   that checks (AWS S3, MinIO, R2) refuses a part torn on the way; a part of a
   local file is sent from the file, and if the bytes sent are not the bytes
   hashed (the file changed in between) the upload is aborted
   (:class:`PartChangedError`), whether or not the store checks.

Uploads that nobody will resume (no state file, or older than
``orphan_upload_age``) are aborted by :meth:`MultipartUploader.abort_orphans`,
so they stop costing storage.

Error handling: request failures are :class:`ObjectStoreError` (retried by
:class:`TierBucket`); an upload id the store no longer knows restarts the
upload from part 1; a hash mismatch raises :class:`UploadCorruptError`.
Resource handling: memory is one part (``part_size``) per upload in flight, or
none from a local file (:class:`~cryptorun_daemon.storage.file_region.FileRegion`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import structlog

from cryptorun_daemon.errors import StorageError
from cryptorun_daemon.runtime.failpoints import failpoint
from cryptorun_daemon.storage.atomic import atomic_write_bytes, make_durable_dirs
from cryptorun_daemon.storage.file_region import FileRegion, hash_part, hash_region
from cryptorun_daemon.storage.manifest import format_hash, new_hasher
from cryptorun_daemon.storage.object_store import ObjectMissingError, TierBucket

log = structlog.get_logger("cryptorun.object_store")

STATE_DIR: Final = "_state/multipart"

#: Reads ``length`` bytes at ``offset`` of the object being uploaded.
ReadRange = Callable[[int, int], Awaitable[bytes | bytearray]]


class UploadCorruptError(StorageError):
    """The bytes read for an upload do not hash to the manifest's value (nothing completed)."""

    code = "corrupt"

    def __init__(self, message: str, *, got: str, size: int) -> None:
        self.got = got
        self.size = size
        super().__init__(message)


class PartChangedError(UploadCorruptError):
    """A part's local file changed between its hashing and its send (upload aborted)."""


@dataclass
class UploadState:
    """What is saved between parts: enough to resume after a crash."""

    key: str
    upload_id: str
    size: int
    content_hash: str
    part_size: int
    started_at: float
    parts: dict[int, str] = field(default_factory=dict)  # part number → ETag

    def to_bytes(self) -> bytes:
        body = {
            "key": self.key,
            "upload_id": self.upload_id,
            "size": self.size,
            "content_hash": self.content_hash,
            "part_size": self.part_size,
            "started_at": self.started_at,
            "parts": {str(n): etag for n, etag in sorted(self.parts.items())},
        }
        return json.dumps(body, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> UploadState:
        data = json.loads(raw)
        return cls(
            key=str(data["key"]),
            upload_id=str(data["upload_id"]),
            size=int(data["size"]),
            content_hash=str(data["content_hash"]),
            part_size=int(data["part_size"]),
            started_at=float(data["started_at"]),
            parts={int(n): str(etag) for n, etag in data["parts"].items()},
        )


@dataclass
class UploadReport:
    """How one upload went: bytes sent now, bytes whose parts were already there."""

    etag: str | None
    sent: int = 0
    reused: int = 0
    resumed: bool = False


class MultipartUploader:
    """Uploads large objects of one tier in resumable parts (see the module docstring)."""

    def __init__(self, bucket: TierBucket, storage_root: Path) -> None:
        self.bucket = bucket
        self.state_dir = storage_root / STATE_DIR / bucket.tier
        self.part_size = bucket.config.part_size

    def state_path(self, key: str) -> Path:
        digest = hashlib.sha256(f"{self.bucket.config.bucket}/{key}".encode()).hexdigest()[:32]
        return self.state_dir / f"{digest}.json"

    # --- state ------------------------------------------------------------------------

    def _load(self, key: str) -> UploadState | None:
        try:
            state = UploadState.from_bytes(self.state_path(key).read_bytes())
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            return None  # a torn or foreign file: the upload it named is an orphan now
        return state if state.key == key else None

    def _save(self, state: UploadState) -> None:
        make_durable_dirs(self.state_dir)
        atomic_write_bytes(self.state_path(state.key), state.to_bytes())

    def _forget(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.state_path(key).unlink()

    # --- upload -------------------------------------------------------------------------

    async def upload(
        self,
        relative: str,
        *,
        size: int,
        content_hash: str,
        read: ReadRange,
        regions: Callable[[int, int], FileRegion] | None = None,
    ) -> UploadReport:
        """Upload ``size`` bytes (read through ``read``) to ``relative``, resuming if possible.

        ``regions``: for a local file, ``(offset, length) → FileRegion`` of it;
        each part is then hashed and sent straight from the file (the page
        cache) instead of being read into a part buffer first.
        Error handling: :class:`UploadCorruptError` (upload aborted) when the
        bytes do not hash to ``content_hash``; :class:`ObjectStoreError` on
        request failures that outlived the retries (state kept: resumable).
        """
        key = self.bucket.key(relative)
        state = await asyncio.to_thread(self._load, key)
        report = UploadReport(etag=None)
        if state is not None and (
            state.size != size
            or state.content_hash != content_hash
            or state.part_size != self.part_size
        ):
            await self._abort(state.key, state.upload_id)  # another version: start over
            state = None
        # Part number → the SHA-256 the store reports for a part it holds (when it does).
        stored_checksums: dict[int, str] = {}
        if state is not None:
            try:
                listed = await self._list_parts(state)
                state.parts = {number: etag for number, (etag, _) in listed.items()}
                stored_checksums = {n: ck for n, (_, ck) in listed.items() if ck is not None}
                report.resumed = True
            except ObjectMissingError:
                state = None  # the store forgot it (aborted, expired): start over
        if state is None:
            state = UploadState(
                key=key,
                upload_id=await self._create(key),
                size=size,
                content_hash=content_hash,
                part_size=self.part_size,
                started_at=time.time(),
            )
            await asyncio.to_thread(self._save, state)
        hasher = new_hasher()
        count = max(1, -(-size // self.part_size))
        # Parts are read and hashed in order; their uploads overlap the next reads.
        # Memory: every part held (read, hashed or in flight) holds one of the
        # bucket's part buffers, so all uploads of a tier together stay bounded.
        sending: list[asyncio.Task[None]] = []
        # Part number → base64 SHA-256 of the bytes we hashed for it (sent or reused).
        checksums: dict[int, str] = {}

        async def send(number: int, data: bytes | bytearray | FileRegion, checksum: str) -> None:
            etag = await self._put_part(state, number, data, checksum)
            self.bucket.count_bytes("put", len(data))
            report.sent += len(data)
            # In memory only: a resumed upload asks the store (ListParts), so no
            # write (and fsync) per part holds up the uploads.
            state.parts[number] = etag
            failpoint("multipart.after_part")

        try:
            for number in range(1, count + 1):
                offset = (number - 1) * self.part_size
                length = min(self.part_size, size - offset)
                # A part buffer: the part's memory, or (from a file) its request slot.
                await self.bucket.part_buffers.acquire()
                data: bytes | bytearray | FileRegion = b""
                try:
                    if regions is not None:
                        data = await asyncio.to_thread(regions, offset, length)
                        taken, checksum = await asyncio.to_thread(hash_region, data, hasher)
                    else:
                        data = await read(offset, length)
                        taken = len(data)
                        checksum = await asyncio.to_thread(hash_part, data, hasher)
                    if taken != length:
                        raise UploadCorruptError(
                            f"{relative}: source gave {taken} bytes at {offset}, expected {length}",
                            got="short read",
                            size=offset + taken,
                        )
                except BaseException:
                    self._release(data)
                    raise
                checksums[number] = checksum
                if number in state.parts and stored_checksums.get(number, checksum) == checksum:
                    report.reused += length
                    self._release(data)
                    del data
                    continue
                task = asyncio.create_task(send(number, data, checksum))
                # Released when the task ends, even if it is cancelled before it starts
                # (its own finally would never run): the permit always goes back, and a
                # region is closed only once nothing sends from it any more.
                task.add_done_callback(functools.partial(self._release_after, data))
                sending.append(task)
                # The part is the send task's now: this frame must not keep it alive
                # while it waits for the other parts and the completion (with every
                # upload of a tier doing so, that was one more part per upload).
                del data
                for task in [task for task in sending if task.done()]:
                    sending.remove(task)
                    task.result()  # a failed part stops the upload now (resumable)
            await asyncio.gather(*sending)
        except BaseException as exc:
            # On any failure the parts still in flight are cancelled and awaited:
            # none outlives this call (their state is saved or resumable)...
            for task in sending:
                task.cancel()
            outcomes = await asyncio.gather(*sending, return_exceptions=True)
            if isinstance(exc, PartChangedError) or any(
                isinstance(outcome, PartChangedError) for outcome in outcomes
            ):
                # ...unless the store holds bytes nobody hashed: never resume or complete.
                await self._abort(key, state.upload_id)
                await asyncio.to_thread(self._forget, key)
            raise
        got = format_hash(hasher.hexdigest())
        if got != content_hash:
            await self._abort(key, state.upload_id)
            await asyncio.to_thread(self._forget, key)
            raise UploadCorruptError(
                f"{relative}: {size} bytes hash to {got}, manifest says {content_hash}",
                got=got,
                size=size,
            )
        report.etag = await self._complete(state, checksums)
        await asyncio.to_thread(self._forget, key)
        return report

    def _release(self, data: bytes | bytearray | FileRegion) -> None:
        """Give back a part's permit (and close its region) once nothing uses it."""
        self.bucket.part_buffers.release()
        if isinstance(data, FileRegion):
            data.close()

    def _release_after(self, data: bytes | bytearray | FileRegion, _task: object) -> None:
        self._release(data)  # a send task's done-callback

    # --- requests (botocore in worker threads) ------------------------------------

    async def _create(self, key: str) -> str:
        client = self.bucket.botocore_client()

        async def attempt() -> str:
            answer = await asyncio.to_thread(
                client.create_multipart_upload,
                Bucket=self.bucket.config.bucket,
                Key=key,
                ChecksumAlgorithm="SHA256",
            )
            return str(answer["UploadId"])

        return await self.bucket.call("multipart", key, attempt)

    async def _put_part(
        self, state: UploadState, number: int, data: bytes | bytearray | FileRegion, checksum: str
    ) -> str:
        """Send one part with ``checksum`` (base64 SHA-256 of the bytes we hashed) as
        ``x-amz-checksum-sha256``: the store refuses bytes that differ from them."""
        client = self.bucket.botocore_client()

        async def attempt() -> str:
            if isinstance(data, FileRegion):
                data.seek(0)  # a retried request sends the part from its start again
            answer = await asyncio.to_thread(
                client.upload_part,
                Bucket=self.bucket.config.bucket,
                Key=state.key,
                UploadId=state.upload_id,
                PartNumber=number,
                Body=data,
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=checksum,  # ours: botocore does not read the part again
            )
            return str(answer["ETag"])

        etag = await self.bucket.call("multipart", state.key, attempt)
        if isinstance(data, FileRegion) and not data.sent_as_hashed():
            raise PartChangedError(
                f"{state.key}: part {number} of {data.path} changed between its hashing "
                "and its send; the upload is thrown away",
                got="changed while sent",
                size=data.length,
            )
        return etag

    async def _list_parts(self, state: UploadState) -> dict[int, tuple[str, str | None]]:
        """The parts the store holds for ``state``'s upload (full-size ones only).

        Part number → (ETag, the part's SHA-256 as the store reports it, if it
        does: AWS S3 and MinIO do, moto does not). A part whose SHA-256 differs
        from the local bytes' is sent again, never reused.
        """
        client = self.bucket.botocore_client()

        async def attempt() -> dict[int, tuple[str, str | None]]:
            parts: dict[int, tuple[str, str | None]] = {}
            marker = 0
            while True:
                answer: dict[str, Any] = await asyncio.to_thread(
                    client.list_parts,
                    Bucket=self.bucket.config.bucket,
                    Key=state.key,
                    UploadId=state.upload_id,
                    PartNumberMarker=marker,
                )
                for part in answer.get("Parts", []):
                    number = int(part["PartNumber"])
                    expected = min(state.part_size, state.size - (number - 1) * state.part_size)
                    if int(part["Size"]) == expected:
                        checksum = part.get("ChecksumSHA256")
                        parts[number] = (str(part["ETag"]), str(checksum) if checksum else None)
                if not answer.get("IsTruncated"):
                    return parts
                marker = int(answer["NextPartNumberMarker"])

        return await self.bucket.call("multipart", state.key, attempt)

    async def _complete(self, state: UploadState, checksums: dict[int, str]) -> str | None:
        """Complete the upload naming each part with its ETag and SHA-256.

        The upload was created with ``ChecksumAlgorithm=SHA256``: AWS S3 then
        requires every part's checksum here, and refuses one that does not
        match the part it holds (a reused part that is not the local bytes).
        """
        client = self.bucket.botocore_client()
        parts = [
            {"PartNumber": n, "ETag": etag, "ChecksumSHA256": checksums[n]}
            for n, etag in sorted(state.parts.items())
            if n in checksums  # every part of this object was hashed in this call
        ]

        async def attempt() -> str | None:
            answer = await asyncio.to_thread(
                client.complete_multipart_upload,
                Bucket=self.bucket.config.bucket,
                Key=state.key,
                UploadId=state.upload_id,
                MultipartUpload={"Parts": parts},
            )
            etag = answer.get("ETag")
            return str(etag) if etag is not None else None

        return await self.bucket.call("multipart", state.key, attempt)

    async def _abort(self, key: str, upload_id: str) -> None:
        client = self.bucket.botocore_client()

        async def attempt() -> None:
            await asyncio.to_thread(
                client.abort_multipart_upload,
                Bucket=self.bucket.config.bucket,
                Key=key,
                UploadId=upload_id,
            )

        with contextlib.suppress(ObjectMissingError):
            await self.bucket.call("multipart", key, attempt)

    async def abort_orphans(self, *, max_age: float | None = None) -> list[str]:
        """Abort this tier's unfinished uploads that will not be resumed; return their keys.

        An upload is an orphan once it was started longer than ``max_age``
        (default ``orphan_upload_age``) ago: by our state file's clock when it
        is ours, else by the store's ``Initiated``. Younger ones may still be
        resumed (ours) or be in flight in another process, and are left alone.
        """
        max_age = self.bucket.config.orphan_upload_age if max_age is None else max_age
        client = self.bucket.botocore_client()
        prefix = self.bucket.key("")

        async def listing() -> list[dict[str, Any]]:
            answer = await asyncio.to_thread(
                client.list_multipart_uploads, Bucket=self.bucket.config.bucket, Prefix=prefix
            )
            return list(answer.get("Uploads", []))

        uploads = await self.bucket.call("multipart", prefix, listing)
        now = datetime.now(UTC)
        aborted: list[str] = []
        for upload in uploads:
            key, upload_id = str(upload["Key"]), str(upload["UploadId"])
            ours = await asyncio.to_thread(self._load, key)
            initiated = upload.get("Initiated")
            started = (
                datetime.fromtimestamp(ours.started_at, UTC)
                if ours is not None and ours.upload_id == upload_id
                else initiated
                if isinstance(initiated, datetime)
                else now
            )
            resumable = ours is not None and ours.upload_id == upload_id
            if now - started < timedelta(seconds=max_age):
                continue  # may still be resumed (ours) or be in flight elsewhere
            await self._abort(key, upload_id)
            if resumable:
                await asyncio.to_thread(self._forget, key)
            aborted.append(key)
            log.info("orphan multipart upload aborted", tier=self.bucket.tier, key=key)
        return aborted
