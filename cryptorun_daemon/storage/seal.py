"""Sealing: turn a fully written partition directory into a replicable one.

The order is the whole protocol: ``_manifest.json`` is written atomically
first, ``_SUCCESS`` last. A crash in between leaves a manifest without
``_SUCCESS``, which every reader treats as "still being written", so nothing
half-sealed is ever served.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from cryptorun_daemon.config import ACTIVE_PASSIVE_TIERS
from cryptorun_daemon.errors import StorageError
from cryptorun_daemon.runtime.failpoints import failpoint
from cryptorun_daemon.storage.atomic import atomic_write_bytes
from cryptorun_daemon.storage.change_feed import note_sealed
from cryptorun_daemon.storage.fence_lock import check_write_permit, fence_lock
from cryptorun_daemon.storage.layout import (
    MANIFEST_NAME,
    SUCCESS_MARKER,
    drop_partials,
    parse_partition_dir,
)
from cryptorun_daemon.storage.manifest import HashCache, Manifest, compute_manifest, read_manifest
from cryptorun_daemon.storage.quarantine_sidecar import prune_sidecar
from cryptorun_daemon.storage.superseded import keep_superseded_manifest
from cryptorun_daemon.storage.write_fence import (
    check_seal,
    read_fence,
    storage_root_of,
)

log = structlog.get_logger(__name__)


def is_sealed(partition_dir: Path) -> bool:
    return (partition_dir / SUCCESS_MARKER).is_file()


def fenced_epoch(partition_dir: Path) -> int:
    """The epoch a seal of ``partition_dir`` must carry now: its tier's fence, else 1.

    The fence (``_state/fence/{tier}.json`` under the storage root) records the
    highest epoch this region has seen; with no fence yet the tier is still at
    its bootstrap epoch 1. Error handling: raises ``PathRejectedError`` for a
    path outside the partition layout.
    """
    key = parse_partition_dir(partition_dir)
    depth = 6 if key.hour is not None else 5
    fence = read_fence(storage_root_of(partition_dir, depth), key.tier)
    return fence.epoch if fence is not None else 1


def seal_partition(
    partition_dir: Path,
    *,
    writer_region: str,
    epoch: int,
    sources: list[dict[str, Any]] | None = None,
    worst_freshness_seconds: float | None = None,
    sealed_at: datetime | None = None,
    cache: HashCache | None = None,
) -> Manifest:
    """Compute and write ``_manifest.json``, then ``_SUCCESS``; return the manifest.

    ``partition_dir`` must be ``{root}/{tier}/{dataset}/venue=/symbol=/date=[/hour=]``.
    Sealing an already sealed partition whose files are unchanged returns the
    existing manifest untouched (idempotent). If the files changed, the
    partition is re-sealed with a new manifest (``_SUCCESS`` is removed first,
    so readers never pair the old marker with the new manifest); replicas then
    see a different ``content_hash`` and move their old copy to ``_superseded/``.

    Fencing (warm, cold): before anything is written, the storage root's
    persistent fence (:mod:`cryptorun_daemon.storage.write_fence`) must name
    ``writer_region`` as the primary at exactly ``epoch`` (no fence file: no
    check), and the root's write permit (the daemon's etcd lease,
    :mod:`cryptorun_daemon.storage.fence_lock`) must allow it.
    Both are checked before hashing and again at the commit point, under the
    tier's fence lock with the fence re-read, so no promotion can be recorded
    between the last check and the rename.

    Blocking (hashes files); call it from a thread in async code.

    Error handling: :class:`FencedError` when the fence refuses the writer;
    :class:`WriteRefusedError` when the write permit does;
    :class:`PathRejectedError` when the directory is outside the layout,
    :class:`StorageError` when it is missing, holds no data file, holds a
    subdirectory or symlink, a Parquet file is unreadable, or the fence
    cannot be read.
    """
    key = parse_partition_dir(partition_dir)
    if not partition_dir.is_dir():
        raise StorageError(f"{partition_dir} is not a directory")
    depth = 6 if key.hour is not None else 5  # the tier folder plus the partition levels
    root = storage_root_of(partition_dir, depth)
    fenced = key.tier in ACTIVE_PASSIVE_TIERS
    check_seal(root, key.tier, writer_region, epoch)
    if fenced:
        check_write_permit(root, key.tier)
    moment = sealed_at if sealed_at is not None else datetime.now(UTC)
    manifest = compute_manifest(
        partition_dir,
        key,
        writer_region=writer_region,
        epoch=epoch,
        sealed_at=moment,
        sources=[dict(s) for s in sources] if sources is not None else None,
        worst_freshness_seconds=worst_freshness_seconds,
        cache=cache,
    )
    if not manifest.files:
        raise StorageError(f"{partition_dir} holds no data files; refusing to seal it empty")
    # Hashing takes time; a promotion elsewhere may have advanced the fence, or
    # the lease may have run low, meanwhile. Check again at the commit point,
    # under the lock a fence advance takes, so the answer still holds at the rename.
    with fence_lock(root, key.tier) if fenced else contextlib.nullcontext():
        check_seal(root, key.tier, writer_region, epoch)
        if fenced:
            check_write_permit(root, key.tier)
        success = partition_dir / SUCCESS_MARKER
        if success.is_file():
            try:
                existing = read_manifest(partition_dir)
            except StorageError:
                existing = None
            if existing is not None and existing.content_hash == manifest.content_hash:
                return existing
            if existing is not None:
                # A research read "as of" before this re-seal must still find what was sealed.
                keep_superseded_manifest(root, existing)
            success.unlink()
        write_seal(partition_dir, manifest, after_manifest="seal.after_manifest")
    failpoint("seal.after_success")
    return manifest


def write_seal(
    partition_dir: Path, manifest: Manifest, *, after_manifest: str = "replica.after_manifest"
) -> None:
    """The commit point: manifest atomically, then ``_SUCCESS`` atomically.

    ``after_manifest`` names the fail point between the two writes (the
    sealer's and the replica's commits are told apart). A warm/cold seal is
    then recorded in the storage root's change feed
    (:mod:`cryptorun_daemon.storage.change_feed`), which replicas follow.
    Before the manifest, the quarantine sidecar forgets files this version
    does not list (:func:`~cryptorun_daemon.storage.quarantine_sidecar.prune_sidecar`)
    and unfinished writes left in the folder go
    (:func:`~cryptorun_daemon.storage.layout.drop_partials`).
    """
    drop_partials(partition_dir)
    prune_sidecar(partition_dir, {entry.name for entry in manifest.files})
    atomic_write_bytes(partition_dir / MANIFEST_NAME, manifest.to_bytes())
    failpoint(after_manifest)
    atomic_write_bytes(partition_dir / SUCCESS_MARKER, b"")
    if manifest.tier in ACTIVE_PASSIVE_TIERS:
        depth = 6 if manifest.key.hour is not None else 5
        note_sealed(storage_root_of(partition_dir, depth), manifest)


def manifest_summary(manifest: Manifest) -> Mapping[str, Any]:
    """The short form printed by ``cryptorun partitions seal``."""
    return {
        "partition": f"{manifest.tier}/{manifest.partition}",
        "files": len(manifest.files),
        "bytes": manifest.total_bytes,
        "rows": manifest.total_rows,
        "content_hash": manifest.content_hash,
        "epoch": manifest.epoch,
        "writer_region": manifest.writer_region,
    }
