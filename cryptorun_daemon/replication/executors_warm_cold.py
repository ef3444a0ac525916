"""Carry out warm/cold steps: verified, resumable, atomic, never destructive.

Per file (the commit protocol, see docs/WARM_COLD.md):

1. already there with the manifest's hash → nothing to do (0 bytes);
2. stream into a hidden partial ``.{name}.partial``; after a crash or a
   dropped connection resume from the partial's length with ``Range`` (and
   ``If-Range`` = expected hash), re-hashing the kept prefix on the way so the
   final hash covers every byte;
3. compare size and xxh3-128 with the manifest; fsync; rename to the final
   name (the directory is fsynced by the manifest write, before ``_SUCCESS``).

Per partition: after every file is in place (and the step's validators
passed), write the source's manifest bytes, then ``_SUCCESS``: the commit
point. A crash anywhere before leaves an unsealed directory nobody reads.

A hash mismatch restarts the file from byte 0 after a backoff; after
``retry_attempts`` the step fails with reason ``corrupt`` and the bad copy is
moved to ``{root}/_quarantine/{tier}/{region}/…`` (with an ``.error.json``
record naming the source) through the validation layer's quarantine helper.
Nothing committed is ever deleted or overwritten: a superseded version
(different content hash) moves to ``{root}/_superseded/{tier}/…`` first, or to
``{root}/{tier}/_divergent/epoch=E/…`` when this root's fence proves it was
written by a fenced writer (a rejoining old primary's post-failover write).

Fencing at the write (see :mod:`cryptorun_daemon.storage.fence`): before a
partition is fetched and again right before its commit point, the manifest is
judged against this root's fence; one written by a fenced writer is never
applied: it is kept under ``_quarantine/{tier}/{region}/…`` as ``fenced``
(``cryptorun_quarantine_total{kind="fenced"}``,
``cryptorun_fenced_total{operation="apply"}``) and the step fails with
reason ``fenced``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Protocol

import structlog

from cryptorun_daemon.config import Tier
from cryptorun_daemon.data.validate.findings import ValidationError
from cryptorun_daemon.data.validate.quarantine import quarantine_file
from cryptorun_daemon.errors import (
    CryptorunError,
    ReplicationError,
    StorageError,
    ValidationFailedError,
)
from cryptorun_daemon.metrics import Metrics
from cryptorun_daemon.replication.rules import Step
from cryptorun_daemon.runtime.failpoints import failpoint
from cryptorun_daemon.storage.atomic import commit_file, move_aside
from cryptorun_daemon.storage.fence import (
    move_divergent,
    quarantine_fenced_manifest,
    read_fence,
)
from cryptorun_daemon.storage.layout import (
    PARTIAL_SUFFIX,
    SUCCESS_MARKER,
    SUPERSEDED_DIR,
)
from cryptorun_daemon.storage.manifest import (
    DEFAULT_HASH_CACHE,
    FileEntry,
    HashCache,
    Manifest,
    data_file_names,
    format_hash,
    new_hasher,
    read_manifest,
)
from cryptorun_daemon.storage.seal import write_seal

log = structlog.get_logger("cryptorun.replication")

CHUNK: Final = 4 << 20

# A validator looks at one committed-to-be file: (path, dataset, tier) -> verdict.
# A verdict of None/True passes, False fails, and an object with ``ok`` (and
# optionally ``detail``) is read through those attributes.
StepValidator = Callable[[Path, str, Tier], Any]


class FileSource(Protocol):
    """Where file bytes come from (``HttpPeer`` in production)."""

    region: str

    def open_file(
        self, tier: Tier, partition: str, name: str, *, offset: int, expected_hash: str
    ) -> Any:  # an async context manager yielding a FileStream
        ...


@dataclass
class StepOutcome:
    """How one step went. ``reason`` is a bounded metric label when ``ok`` is false."""

    step: Step
    ok: bool
    bytes_transferred: int = 0
    committed: list[str] = field(default_factory=list)
    reason: str | None = None
    detail: str | None = None
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "window": str(self.step.window),
            "ok": self.ok,
            "bytes": self.bytes_transferred,
            "committed": list(self.committed),
            "reason": self.reason,
            "detail": self.detail,
            "seconds": round(self.seconds, 3),
        }


def verdict_passed(verdict: Any) -> tuple[bool, str]:
    if verdict is None or verdict is True:
        return True, ""
    if verdict is False:
        return False, "validator returned False"
    ok = bool(getattr(verdict, "ok", False))
    return ok, str(getattr(verdict, "detail", "") or verdict)


class WarmColdExecutor:
    """Runs steps against one storage root, pulling from one :class:`FileSource`.

    Error handling: every failure of a partition ends as a failed
    :class:`StepOutcome` with a bounded reason (``corrupt``, ``io``,
    ``peer_unreachable``, ``timeout``, ``http``, ``validation``) counted in
    ``cryptorun_replication_step_failures_total``; other partitions of the
    step still complete. Resource handling: file handles are closed on every
    path; partials are kept on network errors (to resume) and moved to
    quarantine when they are proven corrupt.
    """

    def __init__(
        self,
        *,
        root: Path,
        region: str,
        source: FileSource,
        metrics: Metrics,
        retry_attempts: int = 3,
        retry_backoff: float = 0.2,
        validators: Sequence[StepValidator] = (),
        strict: bool = False,
        hash_cache: HashCache | None = None,
        chunk_size: int = CHUNK,
    ) -> None:
        self.root = root
        self.region = region
        self.source = source
        self.metrics = metrics
        self.retry_attempts = max(1, retry_attempts)
        self.retry_backoff = retry_backoff
        self.validators = tuple(validators)
        self.strict = strict
        self.hash_cache = hash_cache if hash_cache is not None else DEFAULT_HASH_CACHE
        self.chunk_size = chunk_size
        # (tier, partition) → (content digest, why) of source versions refused by validation.
        self._rejected: dict[tuple[Tier, str], tuple[str, str]] = {}

    # --- steps ------------------------------------------------------------------

    async def run_step(self, step: Step, manifests: Mapping[str, Manifest]) -> StepOutcome:
        """Replicate every partition of ``step``; ``manifests`` maps path → source manifest."""
        started = time.monotonic()
        outcome = StepOutcome(step=step, ok=True)
        results = await asyncio.gather(
            *(
                self._partition_guarded(step.tier, manifests.get(p.path), p.path)
                for p in step.partitions
            )
        )
        for path, (transferred, error) in zip(
            (p.path for p in step.partitions), results, strict=True
        ):
            outcome.bytes_transferred += transferred
            if error is None:
                outcome.committed.append(path)
            elif outcome.ok:
                outcome.ok = False
                outcome.reason = error.reason
                outcome.detail = str(error)
        outcome.seconds = time.monotonic() - started
        labels = {"tier": step.tier, "from": step.from_region, "to": step.to_region}
        self.metrics.replication_step_seconds.labels(tier=step.tier).observe(outcome.seconds)
        if not outcome.ok:
            self.metrics.replication_step_failures_total.labels(
                **labels, reason=outcome.reason or "io"
            ).inc()
            log.warning(
                "replication step failed",
                **labels,
                window=str(step.window),
                reason=outcome.reason,
                detail=outcome.detail,
            )
        return outcome

    async def _partition_guarded(
        self, tier: Tier, manifest: Manifest | None, path: str
    ) -> tuple[int, ReplicationError | None]:
        counter = _Counter()
        try:
            if manifest is None:
                raise ReplicationError(f"no source manifest for {tier}/{path}", reason="http")
            await self.replicate_partition(manifest, counter)
        except ReplicationError as exc:
            return counter.bytes, exc
        except OSError as exc:
            return counter.bytes, ReplicationError(f"{tier}/{path}: {exc}", reason="io")
        except StorageError as exc:
            return counter.bytes, ReplicationError(f"{tier}/{path}: {exc}", reason="io")
        except CryptorunError as exc:
            # Any other deliberate error is this partition's failure, never the
            # whole pass's: the step's other partitions and the lag still publish.
            return counter.bytes, ReplicationError(f"{tier}/{path}: {exc}", reason="io")
        return counter.bytes, None

    # --- partitions ---------------------------------------------------------------

    async def replicate_partition(self, manifest: Manifest, counter: _Counter | None = None) -> int:
        """Bring one partition to ``manifest``'s content and commit it; return bytes pulled.

        Error handling: :class:`ReplicationError` ``fenced`` when this root's
        fence refuses the manifest (checked before fetching and again at the
        commit point, so a fence advanced meanwhile still wins).
        """
        counter = counter if counter is not None else _Counter()
        tier = manifest.tier
        directory = self.root / tier / manifest.partition
        rejected = self._rejected.get((tier, manifest.partition))
        if rejected is not None and rejected[0] == manifest.content_hash:
            # The same bytes were already validated, quarantined and refused; fetching
            # them again would only quarantine a second copy. A re-sealed source
            # (new content) is tried again.
            raise ReplicationError(
                f"not committed (same content refused earlier): {rejected[1]}",
                reason="validation",
            )
        await asyncio.to_thread(self.check_apply, manifest)
        if await asyncio.to_thread(self._already_committed, directory, manifest):
            return 0
        await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
        await asyncio.gather(
            *(self._fetch_file(manifest, directory, entry, counter) for entry in manifest.files)
        )
        failpoint("replica.after_fetch")
        await asyncio.to_thread(self._set_aside_strays, directory, manifest)
        await self._validate(manifest, directory)
        await asyncio.to_thread(self._commit, directory, manifest)
        log.info(
            "partition committed",
            tier=tier,
            partition=manifest.partition,
            source=self.source.region,
            bytes=counter.bytes,
        )
        return counter.bytes

    def accepted(self, manifests: Sequence[Manifest]) -> list[Manifest]:
        """The manifests this root's fence accepts; the others are refused as below (blocking)."""
        if not manifests:
            return []
        fence = read_fence(self.root, manifests[0].tier)
        if fence is None:
            return list(manifests)
        return [
            m for m in manifests if fence.classify(m) != "divergent" or not self.refused_by_fence(m)
        ]

    def refused_by_fence(self, manifest: Manifest) -> bool:
        """True when this root's fence proves ``manifest`` came from a fenced writer.

        The refused manifest is quarantined as ``fenced`` and counted the first
        time it is seen (blocking: reads the fence, may write the quarantine).
        """
        fence = read_fence(self.root, manifest.tier)
        if fence is None or fence.classify(manifest) != "divergent":
            return False
        reason = (
            f"epoch {manifest.epoch} by {manifest.writer_region} sealed at "
            f"{manifest.sealed_at.isoformat()} is not a legitimate write under the "
            f"fence (epoch {fence.epoch}, primary {fence.primary})"
        )
        kept = quarantine_fenced_manifest(
            self.root,
            region=self.region,
            manifest=manifest,
            source=self.source.region,
            reason=reason,
        )
        if kept is not None:
            self.metrics.quarantine_total.labels(
                tier=manifest.tier, region=self.region, kind="fenced"
            ).inc()
            self.metrics.fenced_total.labels(tier=manifest.tier, operation="apply").inc()
            log.warning(
                "fenced manifest refused",
                tier=manifest.tier,
                partition=manifest.partition,
                epoch=manifest.epoch,
                writer=manifest.writer_region,
                source=self.source.region,
                kept_at=str(kept),
            )
        return True

    def check_apply(self, manifest: Manifest) -> None:
        """Raise ``ReplicationError("fenced")`` when the fence refuses ``manifest`` (blocking)."""
        if self.refused_by_fence(manifest):
            raise ReplicationError(
                f"{manifest.tier}/{manifest.partition}: manifest of epoch {manifest.epoch} by "
                f"{manifest.writer_region} refused by the fence (quarantined as fenced)",
                reason="fenced",
            )

    def _commit(self, directory: Path, manifest: Manifest) -> None:
        """The commit point, behind a last fence check."""
        self.check_apply(manifest)
        failpoint("replica.before_commit")
        write_seal(directory, manifest)
        failpoint("replica.after_commit")

    def _already_committed(self, directory: Path, manifest: Manifest) -> bool:
        """True when an identical copy is sealed; moves a different sealed copy aside.

        A held copy that the fence proves divergent goes to ``_divergent/``
        (counted as reconciled ``divergent``), any other to ``_superseded/``.
        """
        if not (directory / SUCCESS_MARKER).is_file():
            return False
        try:
            held = read_manifest(directory)
        except StorageError:
            held = None
        if held is not None and held.content_hash == manifest.content_hash:
            return True
        fence = read_fence(self.root, manifest.tier) if held is not None else None
        if held is not None and fence is not None and fence.classify(held) == "divergent":
            moved_to = move_divergent(self.root, directory, held)
            self.metrics.reconciled_partitions_total.labels(
                tier=manifest.tier, action="divergent"
            ).inc()
            log.warning(
                "divergent partition moved aside",
                tier=manifest.tier,
                partition=manifest.partition,
                epoch=held.epoch,
                to=str(moved_to),
            )
            return False
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        label = f"epoch{held.epoch}-{held.content_hash[-16:]}" if held else "unreadable"
        target = (
            self.root / SUPERSEDED_DIR / manifest.tier / manifest.partition / f"{stamp}-{label}"
        )
        moved = move_aside(directory, target)
        log.warning("superseded partition moved aside", partition=manifest.partition, to=str(moved))
        return False

    def _set_aside_strays(self, directory: Path, manifest: Manifest) -> None:
        """Visible files the manifest does not list (an aborted other version) move aside."""
        wanted = {f.name for f in manifest.files}
        strays = [n for n in data_file_names(directory) if n not in wanted]
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        for name in strays:
            target = (
                self.root
                / SUPERSEDED_DIR
                / manifest.tier
                / manifest.partition
                / f"{stamp}-uncommitted"
                / name
            )
            move_aside(directory / name, target)

    async def _validate(self, manifest: Manifest, directory: Path) -> None:
        """Run the step validators on every file before the commit point.

        Error handling: a rejected file (quarantined by its validator) keeps the
        partition uncommitted — a partition never seals with a file missing —
        and raises :class:`ReplicationError` ``validation`` for this partition
        only; the step's other partitions go on. Without ``strict`` the
        rejection is remembered by content so later passes do not re-fetch the
        same bytes; with ``strict`` the first violation fails it at once.
        """
        rejections: list[str] = []
        for validator in self.validators:
            for entry in manifest.files:
                try:
                    verdict = await asyncio.to_thread(
                        validator, directory / entry.name, manifest.key.dataset, manifest.tier
                    )
                except ValidationFailedError as exc:  # strict mode: first violation
                    raise ReplicationError(
                        f"{manifest.partition}/{entry.name}: {exc}", reason="validation"
                    ) from exc
                except ValueError as exc:  # e.g. a dataset the validator has no schema for
                    ok, detail = False, f"validator cannot check this file: {exc}"
                else:
                    ok, detail = verdict_passed(verdict)
                if ok:
                    continue
                name = getattr(validator, "__name__", type(validator).__name__)
                log.warning(
                    "validator rejected a replicated file",
                    validator=name,
                    file=f"{manifest.tier}/{manifest.partition}/{entry.name}",
                    detail=detail,
                    strict=self.strict,
                )
                message = f"{name} rejected {manifest.partition}/{entry.name}: {detail}"
                if self.strict:
                    raise ReplicationError(message, reason="validation")
                rejections.append(message)
        if rejections:
            summary = "; ".join(rejections)
            self._rejected[(manifest.tier, manifest.partition)] = (manifest.content_hash, summary)
            raise ReplicationError(f"not committed: {summary}", reason="validation")

    # --- files ----------------------------------------------------------------------

    async def _fetch_file(
        self, manifest: Manifest, directory: Path, entry: FileEntry, counter: _Counter
    ) -> None:
        final = directory / entry.name
        partial = directory / f".{entry.name}{PARTIAL_SUFFIX}"
        if await asyncio.to_thread(self._final_matches, final, entry):
            return
        last_error: ReplicationError | None = None
        for attempt in range(1, self.retry_attempts + 1):
            try:
                digest, size = await self._download(manifest, entry, partial, counter)
            except ReplicationError as exc:
                last_error = exc  # network trouble: keep the partial, resume next attempt
            else:
                if size == entry.bytes and digest == entry.hash:
                    await asyncio.to_thread(commit_file, partial, final, sync_dir=False)
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
                await asyncio.to_thread(self._quarantine, manifest, entry, partial, got)
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
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
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
        moved = quarantine_file(
            partial,
            storage_root=self.root,
            tier=manifest.tier,
            region=self.region,
            errors=[finding],
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
        self, manifest: Manifest, entry: FileEntry, partial: Path, counter: _Counter
    ) -> tuple[str, int]:
        """Fill ``partial`` up to the source's end; return (hash, size) of the whole file."""
        loop = asyncio.get_running_loop()
        hasher = new_hasher()
        offset = await asyncio.to_thread(_hash_prefix, partial, entry.bytes, hasher)
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
            fd = await asyncio.to_thread(_open_partial, partial, offset)
            pending: asyncio.Future[None] | None = None
            try:
                size = offset
                buffered: list[bytes] = []
                buffered_len = 0
                async for chunk in stream.content.iter_chunked(1 << 20):
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
                    # Write and hash in a thread while the next chunk arrives.
                    pending = loop.run_in_executor(
                        None, _write_and_hash, fd, b"".join(buffered), hasher
                    )
                    size += buffered_len
                    counter.bytes += buffered_len
                    bytes_metric.inc(buffered_len)
                    buffered, buffered_len = [], 0
                if pending is not None:
                    await pending
                if buffered:
                    await asyncio.to_thread(_write_and_hash, fd, b"".join(buffered), hasher)
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


class _Counter:
    """Bytes pulled for one partition (shared by its concurrent file downloads)."""

    def __init__(self) -> None:
        self.bytes = 0


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


def _write_and_hash(fd: int, data: bytes, hasher: Any) -> None:
    hasher.update(data)
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
