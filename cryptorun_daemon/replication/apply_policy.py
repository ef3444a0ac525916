"""What this root's fence lets a replica apply: the fence policy at apply and at commit.

Fencing at the write (see :mod:`cryptorun_daemon.storage.write_fence`): before
a partition is fetched and again right before its commit point, the manifest
is judged against this root's fence; one written by a fenced writer is never
applied: it is kept under ``_quarantine/{tier}/{region}/…`` as ``fenced``
(``cryptorun_quarantine_total{kind="fenced"}``,
``cryptorun_fenced_total{operation="apply"}``) and the partition fails with
reason ``fenced``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import structlog

from cryptorun_daemon.errors import ReplicationError
from cryptorun_daemon.metrics import Metrics
from cryptorun_daemon.storage.change_feed import note_quarantined
from cryptorun_daemon.storage.manifest import Manifest
from cryptorun_daemon.storage.write_fence import quarantine_fenced_manifest, read_fence
from cryptorun_daemon.timefmt import format_rfc3339

log = structlog.get_logger("cryptorun.replication")


class ApplyPolicy:
    """Judges source manifests against the fence of one storage root.

    All methods are blocking (they read the fence file and may write the
    quarantine); call them from a thread in async code. Error handling: an
    unreadable fence raises :class:`~cryptorun_daemon.errors.StorageError`
    (nothing is applied on a fence that cannot be read).
    """

    def __init__(self, *, root: Path, region: str, source_region: str, metrics: Metrics) -> None:
        self.root = root
        self.region = region
        self.source_region = source_region
        self.metrics = metrics

    def accepted(self, manifests: Sequence[Manifest]) -> list[Manifest]:
        """The manifests this root's fence accepts; the others are refused as below."""
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
        time it is seen.
        """
        fence = read_fence(self.root, manifest.tier)
        if fence is None or fence.classify(manifest) != "divergent":
            return False
        reason = (
            f"epoch {manifest.epoch} by {manifest.writer_region} sealed at "
            f"{format_rfc3339(manifest.sealed_at)} is not a legitimate write under the "
            f"fence (epoch {fence.epoch}, primary {fence.primary})"
        )
        kept = quarantine_fenced_manifest(
            self.root,
            region=self.region,
            manifest=manifest,
            source=self.source_region,
            reason=reason,
        )
        if kept is not None:
            note_quarantined(self.root, manifest)
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
                source=self.source_region,
                kept_at=str(kept),
            )
        return True

    def check_apply(self, manifest: Manifest) -> None:
        """Raise ``ReplicationError("fenced")`` when the fence refuses ``manifest``."""
        if self.refused_by_fence(manifest):
            raise ReplicationError(
                f"{manifest.tier}/{manifest.partition}: manifest of epoch {manifest.epoch} by "
                f"{manifest.writer_region} refused by the fence (quarantined as fenced)",
                reason="fenced",
            )
