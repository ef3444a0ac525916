"""The ``_quarantine.json`` sidecar's name, and keeping it true to the partition it sits in.

Row-level findings are written beside the data file by the validator
(:mod:`cryptorun_daemon.data.validate.quarantine`). A partition's sidecar must
describe only files of the sealed version: when a version is committed (a
seal, a re-seal, a replica's commit), entries naming files that version does
not list — an aborted download's stray, a late-fill file of an earlier version
set aside — are removed at the commit point (:func:`prune_sidecar`), and a
file validated again and found clean loses its entry (:func:`forget_file`). Otherwise
a region would keep findings about a file it no longer holds, and regions that
hold byte-identical partitions would disagree about what is quarantined.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Final

import structlog

from cryptorun_daemon.storage.atomic import atomic_write_bytes, fsync_dir

SIDECAR_NAME: Final = "_quarantine.json"

log = structlog.get_logger("cryptorun.quarantine")


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
    dropped = _drop(folder, lambda name: name not in keep)
    if dropped:
        log.info("quarantine sidecar pruned", folder=str(folder), files=dropped)
    return dropped


def forget_file(data_file: Path) -> bool:
    """Drop ``data_file``'s entry: it was validated again and found clean.

    A file rewritten under the same name (a window redone after a crash) must
    not keep the findings of the bytes it replaced. Returns whether an entry
    was dropped; blocking and error handling as :func:`prune_sidecar`.
    """
    return bool(_drop(data_file.parent, lambda name: name == data_file.name))


def _drop(folder: Path, unwanted: Callable[[str], bool]) -> list[str]:
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
    dropped = sorted(name for name in files if unwanted(name))
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
