"""Sealing: turn a fully written partition directory into a replicable one.

The order is the whole protocol: ``_manifest.json`` is written atomically
first, ``_SUCCESS`` last. A crash in between leaves a manifest without
``_SUCCESS``, which every reader treats as "still being written", so nothing
half-sealed is ever served.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptorun_daemon.errors import StorageError
from cryptorun_daemon.storage.atomic import atomic_write_bytes
from cryptorun_daemon.storage.layout import MANIFEST_NAME, SUCCESS_MARKER, parse_partition_dir
from cryptorun_daemon.storage.manifest import HashCache, Manifest, compute_manifest, read_manifest


def is_sealed(partition_dir: Path) -> bool:
    return (partition_dir / SUCCESS_MARKER).is_file()


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

    Blocking (hashes files); call it from a thread in async code.

    Error handling: :class:`PathRejectedError` when the directory is outside
    the layout, :class:`StorageError` when it is missing, holds no data file,
    holds a subdirectory or symlink, or a Parquet file is unreadable.
    """
    key = parse_partition_dir(partition_dir)
    if not partition_dir.is_dir():
        raise StorageError(f"{partition_dir} is not a directory")
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
    success = partition_dir / SUCCESS_MARKER
    if success.is_file():
        try:
            existing = read_manifest(partition_dir)
        except StorageError:
            existing = None
        if existing is not None and existing.content_hash == manifest.content_hash:
            return existing
        success.unlink()
    write_seal(partition_dir, manifest)
    return manifest


def write_seal(partition_dir: Path, manifest: Manifest) -> None:
    """The commit point: manifest atomically, then ``_SUCCESS`` atomically."""
    atomic_write_bytes(partition_dir / MANIFEST_NAME, manifest.to_bytes())
    atomic_write_bytes(partition_dir / SUCCESS_MARKER, b"")


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
