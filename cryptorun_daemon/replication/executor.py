"""Carry out warm/cold steps: verified, resumable, atomic, never destructive.

The executor orchestrates one partition at a time, each stage in its own
module (the commit protocol, see docs/WARM_COLD.md):

1. **fence policy** (:mod:`~cryptorun_daemon.replication.apply_policy`): a
   manifest this root's fence proves came from a fenced writer is
   quarantined as ``fenced`` and never applied (checked before fetching and
   again at the commit point);
2. **set older versions aside** (:mod:`~cryptorun_daemon.replication.commit`):
   an identical sealed copy means nothing to do; a different one moves to
   ``_superseded/`` or ``_divergent/``, never deleted;
3. **download** (:mod:`~cryptorun_daemon.replication.download`): every file
   into a resumable partial, hashed, compared with the manifest, renamed;
   corrupt copies are quarantined and retried from byte 0;
4. **validate** (:mod:`~cryptorun_daemon.replication.verify`): the step
   validators see every file; a rejection leaves the partition unsealed;
5. **commit** (:mod:`~cryptorun_daemon.replication.commit`): manifest, then
   ``_SUCCESS``, behind a last fence check. A crash anywhere before leaves an
   unsealed directory nobody reads.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import structlog

from cryptorun_daemon.config import Tier
from cryptorun_daemon.errors import CryptorunError, ReplicationError, StorageError
from cryptorun_daemon.metrics import Metrics
from cryptorun_daemon.replication.apply_policy import ApplyPolicy
from cryptorun_daemon.replication.commit import PartitionCommitter
from cryptorun_daemon.replication.download import CHUNK, ByteCounter, FileDownloader, FileSource
from cryptorun_daemon.replication.rules import Step
from cryptorun_daemon.replication.verify import PartitionVerifier, StepValidator
from cryptorun_daemon.runtime.failpoints import failpoint
from cryptorun_daemon.runtime.tasks import gather_or_cancel
from cryptorun_daemon.storage.atomic import make_durable_dirs
from cryptorun_daemon.storage.manifest import DEFAULT_HASH_CACHE, HashCache, Manifest

log = structlog.get_logger("cryptorun.replication")

_T = TypeVar("_T")


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


class WarmColdExecutor:
    """Runs steps against one storage root, pulling from one :class:`FileSource`.

    Error handling: every failure of a partition ends as a failed
    :class:`StepOutcome` with a bounded reason (``corrupt``, ``io``,
    ``peer_unreachable``, ``timeout``, ``http``, ``validation``, ``fenced``)
    counted in ``cryptorun_replication_step_failures_total``; other partitions
    of the step still complete. Resource handling: file handles are closed on
    every path; partials are kept on network errors (to resume) and moved to
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
        max_validations: int = 2,
        io_threads: int = 8,
    ) -> None:
        self.root = root
        # The copier's disk work (writes, hashes, fsyncs, commits) runs in its own
        # threads (validators in the verifier's): the loop's default pool has cpu+4
        # threads shared with the rest of the daemon, and fsyncs queued there stall
        # every write behind them. Threads start on demand; idle ones cost no CPU.
        self.pool = ThreadPoolExecutor(max_workers=max(2, io_threads), thread_name_prefix="copier")
        self.region = region
        self.source = source
        self.metrics = metrics
        self.policy = ApplyPolicy(
            root=root, region=region, source_region=source.region, metrics=metrics
        )
        self.downloader = FileDownloader(
            root=root,
            region=region,
            source=source,
            metrics=metrics,
            retry_attempts=retry_attempts,
            retry_backoff=retry_backoff,
            hash_cache=hash_cache if hash_cache is not None else DEFAULT_HASH_CACHE,
            chunk_size=chunk_size,
            pool=self.pool,
        )
        self.verifier = PartitionVerifier(
            validators=validators,
            strict=strict,
            max_validations=max_validations,
        )
        self.committer = PartitionCommitter(root=root, metrics=metrics, policy=self.policy)

    async def _run(self, fn: Callable[..., _T], *args: Any) -> _T:
        return await asyncio.get_running_loop().run_in_executor(
            self.pool, functools.partial(fn, *args)
        )

    def close(self) -> None:
        """Let the copier's threads end once their work is done (no new work after this)."""
        self.pool.shutdown(wait=False)
        self.verifier.close()

    @property
    def validators(self) -> tuple[StepValidator, ...]:
        """The step validators every partition passes before its commit point."""
        return self.verifier.validators

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
        counter = ByteCounter()
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

    async def replicate_partition(
        self, manifest: Manifest, counter: ByteCounter | None = None
    ) -> int:
        """Bring one partition to ``manifest``'s content and commit it; return bytes pulled.

        Error handling: :class:`ReplicationError` ``fenced`` when this root's
        fence refuses the manifest (checked before fetching and again at the
        commit point, so a fence advanced meanwhile still wins); ``validation``
        when the same content was refused before or a validator rejects a file.
        """
        counter = counter if counter is not None else ByteCounter()
        tier = manifest.tier
        # Built from the manifest's checked key, never by joining its raw partition text.
        directory = manifest.key.directory(self.root)
        self.verifier.check_not_refused(manifest)
        await self._run(self.policy.check_apply, manifest)
        if await self._run(self.committer.already_committed, directory, manifest):
            return 0
        # A new partition folder's name is made durable too (its parents fsynced).
        await self._run(make_durable_dirs, directory)
        await gather_or_cancel(
            self.downloader.fetch_file(manifest, directory, entry, counter)
            for entry in manifest.files
        )
        failpoint("replica.after_fetch")
        await self._run(self.committer.set_aside_strays, directory, manifest)
        await self.verifier.validate(manifest, directory)
        await self._run(self.committer.commit, directory, manifest)
        log.info(
            "partition committed",
            tier=tier,
            partition=manifest.partition,
            source=self.source.region,
            bytes=counter.bytes,
        )
        return counter.bytes

    # --- fence policy -----------------------------------------------------------------

    def accepted(self, manifests: Sequence[Manifest]) -> list[Manifest]:
        """The manifests this root's fence accepts; the others are quarantined as fenced.

        Blocking (see :meth:`ApplyPolicy.accepted`).
        """
        return self.policy.accepted(manifests)
