"""Validation of a replicated partition before its commit point.

After every file of a partition is in place, the step validators (schema,
staleness, anomalies: :mod:`cryptorun_daemon.data.validate`) look at each
file. A partition with a rejected file is never sealed; without ``strict``
the rejection is remembered by content, so later passes do not fetch and
quarantine the same bytes again (a re-sealed source, with new content, is
tried again).
"""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import structlog

from cryptorun_daemon.config import Tier
from cryptorun_daemon.errors import ReplicationError, ValidationFailedError
from cryptorun_daemon.runtime.allocator import release_decode_pool, trim_heap
from cryptorun_daemon.storage.manifest import Manifest

log = structlog.get_logger("cryptorun.replication")

# A validator looks at one committed-to-be file: (path, dataset, tier) -> verdict.
# A verdict of None/True passes, False fails, and an object with ``ok`` (and
# optionally ``detail``) is read through those attributes.
StepValidator = Callable[[Path, str, Tier], Any]


def verdict_passed(verdict: Any) -> tuple[bool, str]:
    """``(passed, detail)`` of one validator verdict (see :data:`StepValidator`)."""
    if verdict is None or verdict is True:
        return True, ""
    if verdict is False:
        return False, "validator returned False"
    ok = bool(getattr(verdict, "ok", False))
    return ok, str(getattr(verdict, "detail", "") or verdict)


def release_memory() -> None:
    """Return freed heap memory to the OS (blocking, a few milliseconds).

    Validators decode whole Parquet files; their checks use Arrow's default
    pool (mimalloc) and glibc's ``malloc`` (numpy), which both keep freed pages
    for reuse, so without this a daemon's steady RSS would stay at its
    validation peak. The tables themselves live in the decode pool
    (:func:`~cryptorun_daemon.runtime.allocator.decode_pool`), which keeps its
    pages from one file to the next and is released when validation pauses
    (:meth:`PartitionVerifier.validate`).
    """
    arrow = sys.modules.get("pyarrow")
    if arrow is not None:
        arrow.default_memory_pool().release_unused()
    trim_heap()


def _check_and_release(validator: StepValidator, path: Path, dataset: str, tier: Tier) -> Any:
    """Run one validator call, then hand its memory back from the thread that decoded.

    After every file, not only when no validation is in flight: during a long
    copy validations overlap without pause, and the allocators' free lists
    would stay at their peak. On the same thread, because Arrow's allocator
    releases only the calling thread's heap.
    """
    try:
        return validator(path, dataset, tier)
    finally:
        release_memory()


def _log_release_failure(done: asyncio.Future[None]) -> None:
    if not done.cancelled() and done.exception() is not None:
        log.warning("decode pool release failed", error=str(done.exception()))


class PartitionVerifier:
    """Runs the step validators on a partition's files and remembers refused content."""

    def __init__(
        self,
        *,
        validators: Sequence[StepValidator] = (),
        strict: bool = False,
        max_validations: int = 2,
    ) -> None:
        self.validators = tuple(validators)
        self.strict = strict
        self.max_validations = max_validations
        # Validators decode whole Parquet files (tens of MB each in memory): at
        # most this many partitions are validated at once, whatever the copy
        # concurrency, so the copier's memory is bounded by configuration.
        self._slots = asyncio.Semaphore(max_validations)
        # ...and only on these threads. The allocators keep freed memory per
        # thread (Arrow's mimalloc heaps, glibc's arenas): decoding on any of the
        # copier's many disk threads left a validation's worth of free pages in
        # each of them, and a release run on another thread cannot hand back a
        # heap it does not own. Threads start on demand; idle ones cost no CPU.
        self._threads = ThreadPoolExecutor(
            max_workers=max(1, max_validations), thread_name_prefix="validate"
        )
        # Partitions being validated or waiting for a slot.
        self._in_flight = 0
        self._closed = False
        # (tier, partition) → (content digest, why) of source versions refused by validation.
        self._rejected: dict[tuple[Tier, str], tuple[str, str]] = {}

    def close(self) -> None:
        """Let the validation threads end once their work is done (no new work after this)."""
        self._closed = True
        self._threads.shutdown(wait=False)

    def check_not_refused(self, manifest: Manifest) -> None:
        """Raise ``ReplicationError("validation")`` if this exact content was refused before.

        The same bytes were already validated, quarantined and refused;
        fetching them again would only quarantine a second copy.
        """
        rejected = self._rejected.get((manifest.tier, manifest.partition))
        if rejected is not None and rejected[0] == manifest.content_hash:
            raise ReplicationError(
                f"not committed (same content refused earlier): {rejected[1]}",
                reason="validation",
            )

    async def validate(self, manifest: Manifest, directory: Path) -> None:
        """Run the step validators on every file before the commit point.

        Error handling: a rejected file (quarantined by its validator) keeps the
        partition uncommitted — a partition never seals with a file missing —
        and raises :class:`ReplicationError` ``validation`` for this partition
        only; the step's other partitions go on. Without ``strict`` the
        rejection is remembered by content so later passes do not re-fetch the
        same bytes; with ``strict`` the first violation fails it at once.
        """
        if not self.validators:
            return
        self._in_flight += 1
        try:
            async with self._slots:
                await self._validate(manifest, directory)
        finally:
            self._in_flight -= 1
            if self._in_flight == 0 and not self._closed:
                # The burst is over: the decode pool's pages go back now, not
                # file by file (which would fault them in again for the next).
                # Not awaited: it must neither replace this call's own error nor
                # hold up a cancellation behind a busy validation thread.
                released = asyncio.get_running_loop().run_in_executor(
                    self._threads, release_decode_pool
                )
                released.add_done_callback(_log_release_failure)

    async def _validate(self, manifest: Manifest, directory: Path) -> None:
        rejections: list[str] = []
        for validator in self.validators:
            for entry in manifest.files:
                try:
                    verdict = await asyncio.get_running_loop().run_in_executor(
                        self._threads,
                        functools.partial(
                            _check_and_release,
                            validator,
                            directory / entry.name,
                            manifest.key.dataset,
                            manifest.tier,
                        ),
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
