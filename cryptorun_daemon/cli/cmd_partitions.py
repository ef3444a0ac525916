"""``cryptorun partitions seal DIR...``: seal directories written by another tool."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from cryptorun_daemon.errors import StorageError
from cryptorun_daemon.storage.seal import fenced_epoch, manifest_summary, seal_partition


def run_seal(paths: Sequence[str | Path], *, region: str, epoch: int | None, out: TextIO) -> int:
    """Seal each partition directory (manifest, then ``_SUCCESS``); print one line each.

    ``epoch=None`` stamps each partition with its tier's current fenced epoch,
    so an operator on the primary does not have to look it up after a failover.

    Returns 0 when every directory was sealed (or already sealed with the same
    content), 1 when any failed; failures are printed and the rest still run.
    """
    failed = 0
    for raw in paths:
        path = Path(raw)
        try:
            stamp = epoch if epoch is not None else fenced_epoch(path)
            manifest = seal_partition(path, writer_region=region, epoch=stamp)
        except StorageError as exc:  # includes PathRejectedError (outside the layout)
            failed += 1
            out.write(f"FAILED {path}: {exc}\n")
            continue
        s = manifest_summary(manifest)
        out.write(
            f"sealed {s['partition']}: {s['files']} file(s), {s['bytes']} bytes, "
            f"{s['rows'] if s['rows'] is not None else '?'} rows, epoch {s['epoch']}, "
            f"{s['content_hash']}\n"
        )
    return 1 if failed else 0
