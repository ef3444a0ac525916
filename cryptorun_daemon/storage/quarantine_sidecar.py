"""The ``_quarantine.json`` sidecar's name, and keeping it true to the partition it sits in.

Row-level findings are written beside the data file by the validator
(:mod:`cryptorun_daemon.data.validate.quarantine`). A partition's sidecar must
describe only files of the sealed version: when a version is committed (a
seal, a re-seal, a replica's commit), entries naming files that version does
not list — an aborted download's stray, a late-fill file of an earlier version
set aside — are removed at the commit point (:func:`prune_sidecar`). Otherwise
a region would keep findings about a file it no longer holds, and regions that
hold byte-identical partitions would disagree about what is quarantined.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path
from typing import Final

from cryptorun_daemon.storage.atomic import atomic_write_bytes, fsync_dir

SIDECAR_NAME: Final = "_quarantine.json"


def read_local_sidecar(folder: Path) -> bytes | None:
    """The folder's sidecar as stored (to commit it elsewhere), ``None`` when it has none."""
    try:
        return (folder / SIDECAR_NAME).read_bytes()
    except FileNotFoundError:
        return None


def prune_sidecar(folder: Path, keep: Collection[str]) -> list[str]:
    """Drop sidecar entries for files not in ``keep``; returns the names dropped.

    No sidecar, or nothing to drop: nothing is written. A sidecar left with no
    entry is removed. Blocking (small JSON file, fsynced).
    Error handling: an unreadable sidecar is left as it is (the reader reports
    it); ``OSError`` from the write propagates, before the commit it precedes.
    """
    path = folder / SIDECAR_NAME
    try:
        document = json.loads(path.read_bytes())
    except FileNotFoundError:
        return []
    except (OSError, ValueError):
        return []
    files = document.get("files") if isinstance(document, dict) else None
    if not isinstance(files, dict):
        return []
    dropped = sorted(name for name in files if name not in keep)
    if not dropped:
        return []
    for name in dropped:
        del files[name]
    if files:
        text = json.dumps(document, indent=2, sort_keys=True, allow_nan=False) + "\n"
        atomic_write_bytes(path, text.encode())
    else:
        path.unlink()
        fsync_dir(folder)
    return dropped
