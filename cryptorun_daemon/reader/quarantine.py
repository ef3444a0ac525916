"""Applying ``_quarantine.json`` sidecars to what a read returns: drop, keep, only.

A sidecar (format: ``docs/VALIDATION.md``; written by
:mod:`cryptorun_daemon.data.validate.quarantine`) lists, per data file, each
finding's ``check``, ``reason`` and flagged rows as half-open ``[start, stop)``
ranges of the file's row numbers. The modes:

- ``drop`` (default): flagged rows are removed;
- ``keep``: every row, plus ``quarantined`` (bool) and ``quarantine_reason``
  (``"check: reason"``, ``"; "``-joined when several findings flag a row;
  null for clean rows);
- ``only``: just the flagged rows, with the same two columns.

Row numbers are file positions, so the flags are applied per batch with the
batch's offset in its file; nothing here reads Parquet.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from cryptorun_daemon.data.validate.quarantine import read_sidecar
from cryptorun_daemon.errors import ReadError
from cryptorun_daemon.reader.request import QuarantineMode

FLAG_COLUMN: Final = "quarantined"
REASON_COLUMN: Final = "quarantine_reason"
FLAG_FIELDS: Final = (
    pa.field(FLAG_COLUMN, pa.bool_(), nullable=False),
    pa.field(REASON_COLUMN, pa.string()),
)
_MAX_FINDINGS: Final = 62  # bits of the per-row finding mask


@dataclass(frozen=True)
class FileFlags:
    """Flagged rows of one data file: sorted unique row numbers and each one's reason."""

    rows: npt.NDArray[np.int64]
    reasons: pa.Array  # string, aligned with ``rows``

    @property
    def count(self) -> int:
        return int(self.rows.size)


NO_FLAGS: Final = FileFlags(np.zeros(0, dtype=np.int64), pa.array([], type=pa.string()))


def sidecar_flags(folder: Path) -> dict[str, FileFlags]:
    """Per data file name in ``folder``, its flagged rows (files without findings absent).

    Error handling: :class:`ReadError` when the sidecar exists but is not
    readable JSON of the documented shape — a read that cannot tell which
    rows are flagged must not guess.
    """
    try:
        document = read_sidecar(folder)
        files = document.get("files", {})
        return {name: _file_flags(entry) for name, entry in files.items() if entry}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ReadError(f"unreadable quarantine sidecar in {folder}: {exc}") from exc


def _file_flags(entry: dict[str, object]) -> FileFlags:
    findings = entry["findings"]
    if not isinstance(findings, list):
        raise TypeError("findings is not a list")
    ranges: list[tuple[int, int, int]] = []  # start, stop, finding index
    labels: list[str] = []
    for index, finding in enumerate(findings[:_MAX_FINDINGS]):
        labels.append(f"{finding['check']}: {finding['reason']}")
        ranges.extend((int(a), int(b), index) for a, b in finding["rows"])
    if not ranges:
        return NO_FLAGS
    rows = np.unique(np.concatenate([np.arange(a, b, dtype=np.int64) for a, b, _ in ranges]))
    mask = np.zeros(rows.size, dtype=np.int64)
    for a, b, index in ranges:
        lo, hi = np.searchsorted(rows, [a, b])
        mask[lo:hi] |= 1 << index
    codes, inverse = np.unique(mask, return_inverse=True)
    texts = [
        "; ".join(labels[i] for i in range(len(labels)) if int(code) >> i & 1) for code in codes
    ]
    reasons = pa.array(texts, type=pa.string()).take(pa.array(inverse.astype(np.int64)))
    return FileFlags(rows, reasons)


def apply_flags(
    batch: pa.RecordBatch, flags: FileFlags, offset: int, mode: QuarantineMode
) -> tuple[list[pa.RecordBatch], int]:
    """``batch`` (rows ``offset…`` of its file) after ``mode``; also how many rows were flagged.

    ``drop`` returns zero-copy slices between the flagged rows (flags are
    sparse and come in runs, so this is a handful of slices, never a copy).
    """
    lo, hi = np.searchsorted(flags.rows, [offset, offset + batch.num_rows])
    local = flags.rows[lo:hi] - offset
    flagged = int(local.size)
    if mode == "drop":
        if flagged == 0:
            return [batch], 0
        # Kept runs: from after one flagged run to the start of the next.
        breaks = np.flatnonzero(np.diff(local) != 1) + 1
        run_starts = np.concatenate([local[:1], local[breaks]])
        run_stops = np.concatenate([local[breaks - 1], local[-1:]]) + 1
        kept_starts = np.concatenate([[0], run_stops])
        kept_stops = np.concatenate([run_starts, [batch.num_rows]])
        return [
            batch.slice(int(a), int(b - a))
            for a, b in zip(kept_starts, kept_stops, strict=True)
            if b > a
        ], flagged
    if mode == "only":
        chosen = batch.take(pa.array(local))
        flag = pa.array(np.ones(flagged, dtype=bool))
        return [_with_columns(chosen, flag, flags.reasons.slice(lo, hi - lo))], flagged
    flag_np = np.zeros(batch.num_rows, dtype=bool)
    flag_np[local] = True
    if flagged:
        positions = np.full(batch.num_rows, -1, dtype=np.int64)
        positions[local] = np.arange(flagged, dtype=np.int64)
        taken = flags.reasons.slice(lo, hi - lo)
        reason = taken.take(pa.array(positions, mask=positions < 0))
    else:
        reason = pa.nulls(batch.num_rows, type=pa.string())
    return [_with_columns(batch, pa.array(flag_np), reason)], flagged


def _with_columns(batch: pa.RecordBatch, flag: pa.Array, reason: pa.Array) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays(
        [*batch.columns, flag, reason],
        schema=batch.schema.append(FLAG_FIELDS[0]).append(FLAG_FIELDS[1]),
    )
