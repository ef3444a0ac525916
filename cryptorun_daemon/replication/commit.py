"""Publish a replicated partition atomically, never destroying a committed version.

Per partition: after every file is in place (and the validators passed),
write the source's manifest bytes, then ``_SUCCESS``: the commit point
(:func:`~cryptorun_daemon.storage.seal.write_seal`, behind a last fence
check). A crash anywhere before leaves an unsealed directory nobody reads.

Nothing committed is ever deleted or overwritten: a superseded version
(different content hash) moves to ``{root}/_superseded/{tier}/…`` first, or to
``{root}/{tier}/_divergent/epoch=E/…`` when this root's fence proves it was
written by a fenced writer (a rejoining old primary's post-failover write).
Visible files the manifest does not list (an aborted other version) move to
``_superseded/`` too before the commit.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import structlog

from cryptorun_daemon.errors import StorageError
from cryptorun_daemon.metrics import Metrics
from cryptorun_daemon.replication.apply_policy import ApplyPolicy
from cryptorun_daemon.runtime.failpoints import failpoint
from cryptorun_daemon.storage.atomic import move_aside
from cryptorun_daemon.storage.fence_lock import check_write_permit, fence_lock
from cryptorun_daemon.storage.layout import SUCCESS_MARKER, SUPERSEDED_DIR
from cryptorun_daemon.storage.manifest import Manifest, data_file_names, read_manifest
from cryptorun_daemon.storage.seal import write_seal
from cryptorun_daemon.storage.write_fence import move_divergent, read_fence
from cryptorun_daemon.timefmt import format_compact

log = structlog.get_logger("cryptorun.replication")


class PartitionCommitter:
    """Sets older versions aside and seals partitions under one storage root.

    All methods are blocking (renames, fsyncs); call them from a thread in
    async code. Error handling: :class:`~cryptorun_daemon.errors.StorageError`
    or :class:`OSError` when a move or the seal fails (the partition then
    stays unsealed); :class:`~cryptorun_daemon.errors.ReplicationError`
    ``fenced`` from the last fence check.
    """

    def __init__(self, *, root: Path, metrics: Metrics, policy: ApplyPolicy) -> None:
        self.root = root
        self.metrics = metrics
        self.policy = policy

    def commit(self, directory: Path, manifest: Manifest) -> None:
        """The commit point, behind a last fence and write-permit check under the fence lock.

        The lock is the one a fence advance takes, so the verdict still holds
        at the rename. The permit refuses only when this region holds the tier
        as primary without a safe lease (a replica's copies are always allowed).
        """
        with fence_lock(self.root, manifest.tier):
            self.policy.check_apply(manifest)
            check_write_permit(self.root, manifest.tier)
            failpoint("replica.before_commit")
            write_seal(directory, manifest)
        failpoint("replica.after_commit")

    def already_committed(self, directory: Path, manifest: Manifest) -> bool:
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
        stamp = format_compact(datetime.now(UTC), precision="microseconds")
        label = f"epoch{held.epoch}-{held.content_hash[-16:]}" if held else "unreadable"
        target = (
            self.root / SUPERSEDED_DIR / manifest.tier / manifest.partition / f"{stamp}-{label}"
        )
        moved = move_aside(directory, target)
        log.warning("superseded partition moved aside", partition=manifest.partition, to=str(moved))
        return False

    def set_aside_strays(self, directory: Path, manifest: Manifest) -> None:
        """Visible files the manifest does not list (an aborted other version) move aside."""
        wanted = {f.name for f in manifest.files}
        strays = [n for n in data_file_names(directory) if n not in wanted]
        stamp = format_compact(datetime.now(UTC), precision="microseconds")
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
