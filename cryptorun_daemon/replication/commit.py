"""Publish a replicated partition atomically, never destroying a committed version.

Per partition: after every file is in place (and the validators passed),
write the source's manifest bytes, then ``_SUCCESS``: the commit point, behind
a last fence check (:meth:`PartitionCommitter.commit`, the same two writes as
a writer's :func:`~cryptorun_daemon.storage.seal.write_seal`). A crash
anywhere before leaves an unsealed directory nobody reads.

Nothing committed is ever deleted or overwritten: a superseded version
(different content hash) moves to ``{root}/_superseded/{tier}/…`` first, or to
``{root}/{tier}/_divergent/epoch=E/…`` when this root's fence proves it was
written by a fenced writer (a rejoining old primary's post-failover write).
Visible files the manifest does not list (an aborted other version) move to
``_superseded/`` too before the commit.

A new version that only *adds* files to the held one (the hot sealer's
sub-hour windows and late fills add a file to the hour partition, and never
rewrite one) is applied in place: the held manifest is kept under
``_superseded/`` (its files stay in the live partition, where the research
reader's ``as_of`` finds them, as for a writer's re-seal in place), ``_SUCCESS``
is removed, and the downloader skips every file whose hash already matches,
so only the added files cross the network.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import structlog

from cryptorun_daemon.errors import StorageError
from cryptorun_daemon.metrics import Metrics
from cryptorun_daemon.replication.apply_policy import ApplyPolicy
from cryptorun_daemon.runtime.failpoints import failpoint
from cryptorun_daemon.storage.atomic import atomic_write_bytes, fsync_dir, move_aside
from cryptorun_daemon.storage.change_feed import note_removed, note_sealed
from cryptorun_daemon.storage.fence_lock import check_write_permit, fence_lock
from cryptorun_daemon.storage.layout import (
    MANIFEST_NAME,
    SUCCESS_MARKER,
    SUPERSEDED_DIR,
    drop_partials,
)
from cryptorun_daemon.storage.manifest import Manifest, data_file_names, read_manifest
from cryptorun_daemon.storage.quarantine_sidecar import prune_sidecar
from cryptorun_daemon.storage.scrub import files_complete
from cryptorun_daemon.storage.superseded import keep_superseded_manifest
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
        """The commit point: manifest, then ``_SUCCESS`` behind a last fence check.

        1. the manifest is written atomically (fsynced, renamed, directory
           fsynced, which also makes the data files' renames durable) before
           the fence lock is taken: an unsealed directory is read by nobody,
           and a crash here is the known "manifest, no ``_SUCCESS``" state;
        2. under the tier's fence lock (the one a fence advance takes, so the
           verdict still holds at the rename) the fence and the write permit
           are checked again and ``_SUCCESS`` is created: an empty file needs
           no data flush, so the lock is held for no fsync at all and
           concurrent commits no longer queue behind each other's fsyncs;
        3. the directory is fsynced (``_SUCCESS`` durable), then the seal is
           recorded in the root's change feed (a missed entry is found by the
           next scrub, see :func:`~cryptorun_daemon.storage.change_feed.note_sealed`).

        The permit refuses only when this region holds the tier as primary
        without a safe lease (a replica's copies are always allowed).
        """
        failpoint("replica.before_commit")
        drop_partials(directory)
        prune_sidecar(directory, {entry.name for entry in manifest.files})
        atomic_write_bytes(directory / MANIFEST_NAME, manifest.to_bytes())
        failpoint("replica.after_manifest")
        with fence_lock(self.root, manifest.tier):
            self.policy.check_apply(manifest)
            check_write_permit(self.root, manifest.tier)
            # Never through a symlink planted in the partition (a hostile tree).
            flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
            os.close(os.open(directory / SUCCESS_MARKER, flags, 0o644))
        fsync_dir(directory)
        note_sealed(self.root, manifest)
        failpoint("replica.after_commit")

    def already_committed(self, directory: Path, manifest: Manifest) -> bool:
        """True when an identical copy is sealed; moves a different sealed copy aside.

        A sealed copy the new version only adds files to is unsealed in place
        instead (its manifest kept under ``_superseded/``), so its files are
        not fetched again.
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
            if files_complete(directory, held):
                return True
            # Sealed but a listed file is gone or short (deleted by hand, a bad
            # restore): unseal it so nobody reads it half-there, and let the
            # downloader fetch what is missing (files that still match are kept).
            (directory / SUCCESS_MARKER).unlink()
            note_removed(self.root, manifest.key, "lost", held)
            log.warning("incomplete partition unsealed for repair", partition=manifest.partition)
            return False
        fence = read_fence(self.root, manifest.tier) if held is not None else None
        if held is not None and fence is not None and fence.classify(held) == "divergent":
            moved_to = move_divergent(self.root, directory, held)
            note_removed(self.root, manifest.key, "superseded", held)
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
        if held is not None and only_adds_files(held, manifest):
            keep_superseded_manifest(self.root, held)
            (directory / SUCCESS_MARKER).unlink()
            fsync_dir(directory)
            log.info(
                "partition grows in place",
                partition=manifest.partition,
                kept_files=len(held.files),
                added_files=len(manifest.files) - len(held.files),
            )
            return False
        stamp = format_compact(datetime.now(UTC), precision="microseconds")
        label = f"epoch{held.epoch}-{held.content_hash[-16:]}" if held else "unreadable"
        target = (
            self.root / SUPERSEDED_DIR / manifest.tier / manifest.partition / f"{stamp}-{label}"
        )
        moved = move_aside(directory, target)
        note_removed(self.root, manifest.key, "superseded", held)
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


def only_adds_files(held: Manifest, manifest: Manifest) -> bool:
    """Whether ``manifest`` lists every file of ``held`` unchanged (same name, size, hash)."""
    for entry in held.files:
        same = manifest.file(entry.name)
        if same is None or same.hash != entry.hash or same.bytes != entry.bytes:
            return False
    return held.key == manifest.key
