"""Setting bad data aside without losing a byte: sidecars, quarantine moves, counts.

Row-level findings leave the file where it is and describe the bad rows in a
``_quarantine.json`` sidecar in the file's folder (integrity hashes and
point-in-time reads stay intact; readers drop the listed rows with
:func:`quarantined_rows`). A file that cannot be judged row by row (wrong
schema, unreadable) is moved to ``{storage.root}/_quarantine/{tier}/{region}/``
under its partition path, with ``<name>.error.json`` beside it (written by the
one record writer, :mod:`cryptorun_daemon.storage.quarantine_record`). Nothing
here deletes anything: a release moves the file back and renames the error
record.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from cryptorun_daemon.config import TIERS
from cryptorun_daemon.data.validate.findings import BatchResult, ValidationError
from cryptorun_daemon.errors import StorageError
from cryptorun_daemon.storage.layout import QUARANTINE_DIR, quarantine_dir
from cryptorun_daemon.storage.quarantine_record import (
    ERROR_SUFFIX,
    error_record_path,
    write_quarantine_record,
)
from cryptorun_daemon.storage.quarantine_sidecar import SIDECAR_NAME
from cryptorun_daemon.timefmt import format_rfc3339

RELEASED_SUFFIX: Final = ".released.json"
SIDECAR_VERSION: Final = 1
MAX_EXAMPLES: Final = 5


def _now() -> str:
    return format_rfc3339(datetime.now(UTC), precision="microseconds")


def _write_json_atomically(path: Path, document: Mapping[str, Any]) -> None:
    """Write via a temporary file and ``os.replace``: readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(document, indent=2, sort_keys=True, allow_nan=False) + "\n")
    os.replace(tmp, path)


def row_ranges(rows: npt.NDArray[np.int64]) -> list[list[int]]:
    """Sorted row indices as half-open ``[start, stop)`` runs (stale rows come in runs)."""
    if rows.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = np.concatenate([rows[:1], rows[breaks]])
    stops = np.concatenate([rows[breaks - 1], rows[-1:]]) + 1
    return [[int(a), int(b)] for a, b in zip(starts.tolist(), stops.tolist(), strict=True)]


def sidecar_entry(
    result: BatchResult, *, schema_ref: str, fingerprint: str, tier: str, region: str
) -> dict[str, Any]:
    """The sidecar record of one file's row-level findings."""
    findings = []
    for group in result.groups:
        findings.append(
            {
                "check": group.check,
                "field": group.field,
                "reason": group.reason,
                "expected": group.expected,
                "count": group.count,
                "rows": row_ranges(group.rows),
                "examples": [
                    {"row": row, **error.to_dict()} for row, error in group.examples[:MAX_EXAMPLES]
                ],
            }
        )
    return {
        "schema": schema_ref,
        "fingerprint": fingerprint,
        "tier": tier,
        "region": region,
        "rows": result.num_rows,
        "flagged_rows": result.flagged,
        "validated_at": _now(),
        "findings": findings,
    }


def read_sidecar(folder: Path) -> dict[str, Any]:
    """The folder's sidecar, or an empty one when there is none."""
    path = folder / SIDECAR_NAME
    if not path.exists():
        return {"version": SIDECAR_VERSION, "files": {}}
    document: dict[str, Any] = json.loads(path.read_text())
    return document


def write_sidecar(data_file: Path, entry: Mapping[str, Any]) -> Path:
    """Record ``entry`` for ``data_file`` in its folder's sidecar; other files' entries stay.

    Resource handling: read-modify-write of one small JSON file; callers
    validate one partition folder from one task at a time.
    """
    document = read_sidecar(data_file.parent)
    document.setdefault("files", {})[data_file.name] = dict(entry)
    document["version"] = SIDECAR_VERSION
    path = data_file.parent / SIDECAR_NAME
    _write_json_atomically(path, document)
    return path


def quarantined_rows(data_file: Path) -> npt.NDArray[np.int64]:
    """Sorted, unique row indices of ``data_file`` that readers should drop."""
    entry = read_sidecar(data_file.parent).get("files", {}).get(data_file.name)
    if not entry:
        return np.zeros(0, dtype=np.int64)
    parts = [
        np.arange(start, stop, dtype=np.int64)
        for finding in entry["findings"]
        for start, stop in finding["rows"]
    ]
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)


def quarantine_destination(
    path: Path, *, storage_root: Path, tier: str, region: str, relative_to: Path | None = None
) -> Path:
    """Where a file-level failure goes: ``_quarantine/{tier}/{region}/<partition path>``.

    The partition path is ``path`` relative to ``relative_to`` (default
    ``storage_root/tier``); a file outside it keeps only its name. An
    existing file is never overwritten: ``.1``, ``.2``… are appended.
    """
    base = relative_to if relative_to is not None else storage_root / tier
    try:
        relative = path.resolve().relative_to(base.resolve())
    except ValueError:
        relative = Path(path.name)
    # The layout checks tier and region; ``relative`` comes from resolved paths (no '..').
    target = quarantine_dir(storage_root, tier, region, None) / relative
    candidate, n = target, 0
    while candidate.exists() or error_record_path(candidate).exists():
        n += 1
        candidate = target.with_name(f"{target.name}.{n}")
    return candidate


def quarantine_file(
    path: Path,
    *,
    storage_root: Path,
    tier: str,
    region: str,
    errors: Sequence[ValidationError],
    relative_to: Path | None = None,
    source: str | None = None,
) -> Path:
    """Move ``path`` into quarantine with an error record beside it; returns the new path.

    Error handling: a failed move raises ``StorageError``; the file then stays
    where it was (moves are atomic renames on one filesystem, copy-then-rename
    across filesystems).
    """
    target = quarantine_destination(
        path, storage_root=storage_root, tier=tier, region=region, relative_to=relative_to
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "kind": "file",
        "original_path": str(path),
        "relative_path": str(target.relative_to(quarantine_dir(storage_root, tier, region, None))),
        "tier": tier,
        "region": region,
        "source": source,
        "quarantined_at": _now(),
        "errors": [error.to_dict() for error in errors],
    }
    try:
        shutil.move(str(path), str(target))
    except OSError as exc:
        raise StorageError(f"cannot quarantine {path}: {exc}") from exc
    write_quarantine_record(target, record)
    return target


def release_file(quarantined: Path, *, storage_root: Path) -> Path:
    """Move a quarantined file back to ``storage_root/{tier}/<relative path>``.

    The error record is kept, renamed to ``<name>.released.json`` with the
    release time. Error handling: raises ``StorageError`` when the record is
    missing or the original location is occupied (nothing is overwritten).
    """
    record_path = error_record_path(quarantined)
    if not record_path.exists():
        raise StorageError(f"{quarantined} has no {ERROR_SUFFIX} record; not a quarantined file")
    record = json.loads(record_path.read_text())
    relative = Path(record["relative_path"])
    if relative.name != quarantined.name:
        relative = relative.with_name(quarantined.name)
    destination: Path = storage_root / str(record["tier"]) / relative
    if destination.exists():
        raise StorageError(f"refusing to overwrite {destination}")
    destination.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(quarantined), str(destination))
    record["released_at"] = _now()
    record["released_to"] = str(destination)
    write_quarantine_record(quarantined, record)
    # A rename, not a delete: the audit trail of the quarantine stays on disk.
    os.replace(record_path, quarantined.with_name(quarantined.name + RELEASED_SUFFIX))
    return destination


def _sidecars(folder: Path) -> Iterable[Path]:
    if folder.is_dir():
        yield from folder.rglob(SIDECAR_NAME)


def quarantine_counts(
    storage_root: Path, *, region: str | None = None
) -> dict[str, dict[str, int]]:
    """Per tier: quarantined ``files`` (awaiting release) and flagged ``rows`` in sidecars.

    ``region`` limits both to what that region quarantined. Resource handling:
    walks the tier folders on each call; callers serving status often should
    cache the answer for a few seconds.
    """
    counts: dict[str, dict[str, int]] = {}
    for tier in TIERS:
        files = 0
        qdir = storage_root / QUARANTINE_DIR / tier
        if qdir.is_dir():
            for record in qdir.rglob("*" + ERROR_SUFFIX):
                if region is None or record.relative_to(qdir).parts[0] == region:
                    files += 1
        rows = 0
        for sidecar in _sidecars(storage_root / tier):
            try:
                entries = json.loads(sidecar.read_text()).get("files", {})
            except (OSError, ValueError):
                continue  # a sidecar being replaced right now; the next call counts it
            for entry in entries.values():
                if region is None or entry.get("region") == region:
                    rows += int(entry.get("flagged_rows", 0))
        counts[tier] = {"files": files, "rows": rows}
    return counts
