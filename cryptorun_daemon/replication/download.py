"""Bring one file of a partition onto local disk: resumable, hashed, verified.

Per file (steps 1–3 of the commit protocol, see docs/WARM_COLD.md):

1. already there under its final name with the manifest's hash → nothing to
   do (0 bytes); a final file with other content is moved to
   ``{root}/_superseded/…`` (never deleted);
2. stream into a hidden partial ``.{name}.partial``; after a crash or a
   dropped connection resume from the partial's length with ``Range`` (and
   ``If-Range`` = expected hash), re-hashing the kept prefix on the way so the
   final hash covers every byte;
3. compare size and xxh3-128 with the manifest; fsync; rename to the final
   name (the directory is fsynced later by the manifest write, before
   ``_SUCCESS``: see :mod:`cryptorun_daemon.replication.commit`).

A hash mismatch restarts the file from byte 0 after a backoff; after
``retry_attempts`` the file fails with reason ``corrupt``. Every proven-bad
copy is moved to ``{root}/_quarantine/{tier}/{region}/…`` (with an
``.error.json`` record naming the source) through the validation layer's
quarantine helper.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar

import structlog

from cryptorun_daemon.config import Tier
from cryptorun_daemon.data.validate.findings import ValidationError
from cryptorun_daemon.data.validate.quarantine import quarantine_file
from cryptorun_daemon.errors import ReplicationError
from cryptorun_daemon.metrics import Metrics
from cryptorun_daemon.storage.atomic import commit_file, move_aside
from cryptorun_daemon.storage.layout import PARTIAL_SUFFIX, SUPERSEDED_DIR
from cryptorun_daemon.storage.manifest import (
    FileEntry,
    HashCache,
    Manifest,
    format_hash,
    new_hasher,
)
from cryptorun_daemon.timefmt import format_compact

log = structlog.get_logger("cryptorun.replication")

#: Bytes handed to the disk thread at once (one ``writev`` + hash per batch). With
#: one batch being written while the next arrives, a download holds at most two.
CHUNK: Final = 1 << 19

_T = TypeVar("_T")


class ChunkStream(Protocol):
    """A file body: ``iter_any`` yields the bytes as they arrive (aiohttp's reader has it)."""

    def iter_any(self) -> AsyncIterator[bytes]: ...


class OpenFile(Protocol):
    """An open file download; ``content`` starts at ``offset`` in the file."""

    @property
    def offset(self) -> int: ...

    @property
    def etag(self) -> str | None: ...

    @property
    def content(self) -> ChunkStream: ...


class FileSource(Protocol):
    """Where file bytes come from (``HttpPeer``, or a peer's bucket)."""

    region: str

    def open_file(
        self, tier: Tier, partition: str, name: str, *, offset: int, expected_hash: str
    ) -> contextlib.AbstractAsyncContextManager[OpenFile]: ...


class ByteCounter:
    """Bytes pulled for one partition (shared by its concurrent file downloads)."""

    def __init__(self) -> None:
        self.bytes = 0


class FileDownloader:
    """Fetches the files of a manifest from one :class:`FileSource` into one storage root.

    Error handling: network trouble (:class:`ReplicationError` from the
    source) keeps the partial for the next attempt to resume; a size or hash
    mismatch quarantines the copy and counts
    ``cryptorun_data_consistency_errors_total{check="corrupt"}``; after
    ``retry_attempts`` the last error is raised. Resource handling: the
    partial's descriptor is closed on every path, after any write still
    running in its thread has finished.
    """

    def __init__(
        self,
        *,
        root: Path,
        region: str,
        source: FileSource,
        metrics: Metrics,
        retry_attempts: int,
        retry_backoff: float,
        hash_cache: HashCache,
        chunk_size: int = CHUNK,
        pool: Executor | None = None,
    ) -> None:
        self.root = root
        self.region = region
        self.source = source
        self.metrics = metrics
        self.retry_attempts = max(1, retry_attempts)
        self.retry_backoff = retry_backoff
        self.hash_cache = hash_cache
        self.chunk_size = chunk_size
        # The copier's own disk threads (sized by configuration, see the executor):
        # writes, hashes and fsyncs never queue behind the daemon's other blocking work.
        self.pool = pool

    async def _run(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        return await asyncio.get_running_loop().run_in_executor(
            self.pool, functools.partial(fn, *args, **kwargs)
        )

    async def fetch_file(
        self, manifest: Manifest, directory: Path, entry: FileEntry, counter: ByteCounter
    ) -> None:
        """Put ``entry`` under its final name in ``directory`` with the manifest's content."""
        final = directory / entry.name
        partial = directory / f".{entry.name}{PARTIAL_SUFFIX}"
        if await self._run(self._final_matches, final, entry):
            return
        last_error: ReplicationError | None = None
        for attempt in range(1, self.retry_attempts + 1):
            try:
                digest, size = await self._download(manifest, entry, partial, counter)
            except ReplicationError as exc:
                last_error = exc  # network trouble: keep the partial, resume next attempt
            else:
                if size == entry.bytes and digest == entry.hash:
                    await self._run(commit_file, partial, final, sync_dir=False)
                    return
                got = f"{size} bytes hashing to {digest} (attempt {attempt})"
                last_error = ReplicationError(
                    f"{manifest.tier}/{manifest.partition}/{entry.name}: got {size} bytes "
                    f"hashing to {digest}, manifest says {entry.bytes} bytes {entry.hash}",
                    reason="corrupt",
                )
                # Every proven-bad copy is kept in quarantine (never deleted), which
                # also clears the way for the next attempt to start from byte 0.
                self.metrics.data_consistency_errors_total.labels(check="corrupt").inc()
                await self._run(self._quarantine, manifest, entry, partial, got)
            if attempt < self.retry_attempts:
                await asyncio.sleep(self.retry_backoff * 2 ** (attempt - 1))
        assert last_error is not None  # the loop ran at least once
        raise last_error

    def _final_matches(self, final: Path, entry: FileEntry) -> bool:
        """A file already under its final name counts only if its hash matches."""
        try:
            facts = self.hash_cache.facts(final, inspect=False)
        except FileNotFoundError:
            return False
        if facts.size == entry.bytes and facts.hash == entry.hash:
            return True
        stamp = format_compact(datetime.now(UTC), precision="microseconds")
        move_aside(
            final,
            self.root
            / SUPERSEDED_DIR
            / final.relative_to(self.root).parent
            / f"{stamp}-uncommitted"
            / final.name,
        )
        return False

    def _quarantine(self, manifest: Manifest, entry: FileEntry, partial: Path, got: str) -> None:
        """Move the proven-bad copy to ``_quarantine/{tier}/{region}/{partition}/``."""
        if not partial.exists():
            return
        finding = ValidationError(
            check="corrupt",
            field="",
            value=got,
            expected=f"{entry.bytes} bytes hashing to {entry.hash} (source manifest)",
            reason="hash_mismatch",
        )
        # The folder the partition path is relative to: ``{root}/{tier}``, or the
        # bucket → bucket spool's ``{root}/_state/bucket_spool/{tier}``.
        tier_root = partial.parent.parents[len(manifest.key.relpath.split("/")) - 1]
        moved = quarantine_file(
            partial,
            storage_root=self.root,
            tier=manifest.tier,
            region=self.region,
            errors=[finding],
            relative_to=tier_root,
            source=self.source.region,
        )
        self.metrics.quarantine_total.labels(
            tier=manifest.tier, region=self.region, kind="file"
        ).inc()
        log.error(
            "corrupt replica quarantined",
            file=f"{manifest.partition}/{entry.name}",
            source=self.source.region,
            to=str(moved),
        )

    async def _download(
        self, manifest: Manifest, entry: FileEntry, partial: Path, counter: ByteCounter
    ) -> tuple[str, int]:
        """Fill ``partial`` up to the source's end; return (hash, size) of the whole file."""
        loop = asyncio.get_running_loop()
        hasher = new_hasher()
        offset = await self._run(_hash_prefix, partial, entry.bytes, hasher)
        if offset == entry.bytes:
            return format_hash(hasher.hexdigest()), offset
        labels = {"tier": manifest.tier, "from": self.source.region, "to": self.region}
        bytes_metric = self.metrics.replication_bytes_total.labels(**labels)
        async with self.source.open_file(
            manifest.tier,
            manifest.partition,
            entry.name,
            offset=offset,
            expected_hash=entry.hash,
        ) as stream:
            if stream.offset != offset:
                # The source ignored our Range (or holds another version): start over.
                hasher = new_hasher()
                offset = 0
            fd = await self._run(_open_partial, partial, offset)
            pending: asyncio.Future[None] | None = None
            try:
                size = offset
                buffered: list[bytes] = []
                buffered_len = 0
                # iter_any hands over whatever the socket delivered (no re-chunking
                # copies); the batch goes to the disk thread as a list (one writev).
                async for chunk in stream.content.iter_any():
                    buffered.append(chunk)
                    buffered_len += len(chunk)
                    if size + buffered_len > entry.bytes:
                        # Never write past the manifest's size: a source sending more
                        # is wrong, and an unbounded stream must not fill the disk.
                        raise ReplicationError(
                            f"{manifest.tier}/{manifest.partition}/{entry.name}: source sent "
                            f"more than the manifest's {entry.bytes} bytes",
                            reason="corrupt",
                        )
                    if buffered_len < self.chunk_size:
                        continue
                    if pending is not None:
                        await pending
                    # Write and hash in a thread while the next batch arrives.
                    pending = loop.run_in_executor(self.pool, _write_and_hash, fd, buffered, hasher)
                    size += buffered_len
                    counter.bytes += buffered_len
                    bytes_metric.inc(buffered_len)
                    buffered, buffered_len = [], 0
                if pending is not None:
                    await pending
                if buffered:
                    await self._run(_write_and_hash, fd, buffered, hasher)
                    size += buffered_len
                    counter.bytes += buffered_len
                    bytes_metric.inc(buffered_len)
            finally:
                try:
                    if pending is not None and not pending.done():
                        # A write may still run in its thread (disconnect or cancellation
                        # mid-stream): let it finish before the descriptor is closed, or
                        # it could land in whatever file reuses the number.
                        with contextlib.suppress(Exception):
                            await asyncio.shield(pending)
                finally:
                    os.close(fd)  # cheap and must happen even if cancelled again here
        return format_hash(hasher.hexdigest()), size


def _hash_prefix(partial: Path, expected_size: int, hasher: Any) -> int:
    """Feed the kept prefix of ``partial`` to ``hasher``; return its length.

    A partial longer than the file (a leftover of another version) is emptied.
    """
    try:
        size = partial.stat().st_size
    except FileNotFoundError:
        return 0
    if size > expected_size:
        os.truncate(partial, 0)
        return 0
    with partial.open("rb", buffering=0) as handle:
        buffer = bytearray(CHUNK)
        view = memoryview(buffer)
        remaining = size
        while remaining:
            n = handle.readinto(buffer)
            if not n:
                break
            hasher.update(view[: min(n, remaining)])
            remaining -= min(n, remaining)
    return size


def _open_partial(partial: Path, offset: int) -> int:
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT, 0o644)
    os.ftruncate(fd, offset)
    os.lseek(fd, offset, os.SEEK_SET)
    return fd


def _write_and_hash(fd: int, chunks: list[bytes], hasher: Any) -> None:
    """Hash every chunk, then write them all at the descriptor's offset (``writev``)."""
    for chunk in chunks:
        hasher.update(chunk)
    views = [memoryview(c) for c in chunks if c]
    while views:
        written = os.writev(fd, views[:_IOV_MAX])
        # A short write: drop what went out and retry the rest.
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if views and written:
            views[0] = views[0][written:]


#: At most this many buffers per writev call (the Linux and POSIX minimum limit).
_IOV_MAX: Final = 1024
