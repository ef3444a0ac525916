"""Seal one window of one warm partition from its staged files, in columnar form.

The same selection as :func:`partition_writer.select_rows` and the same
per-source summary as :func:`partition_writer.source_summary`, computed with
Arrow and NumPy over the staged columns instead of over Python objects:

- trades: one row per ``trade_id`` (per ``(origin, seq)`` for a trade without
  an id), the copy from the source authoritative at its ingest time, else the
  best-ranked source, else the first in journal order;
- books: only rows from the source authoritative at their ingest time (the
  best-ranked source present where nobody was elected yet);
- output order ``(ts, rank(origin), seq)``, ties in journal order.

Memory: the staged files are memory-mapped (their pages are the kernel's file
cache, not the heap); the heap holds a few integer arrays per row of the
partition's window (the selection keys) and one slice of output rows at a
time, never the rows as Python objects.

Blocking (Parquet I/O): call from a worker thread.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyarrow import ipc

from cryptorun_daemon.hot import partition_writer as pw
from cryptorun_daemon.hot.staging import INGEST_COLUMN, TS_COLUMN

Timeline = Callable[[str, str], tuple[list[int], list[str]] | None]
Int64s = npt.NDArray[np.int64]
# Output rows converted per Parquet write; bounds the heap used for the output.
SLICE_ROWS = 65_536


class StagedRows:
    """A partition-window's staged files as memory-mapped record batches.

    Resource handling: the batches keep the files' mappings alive; drop the
    object to release them.
    """

    def __init__(self, files: list[Path]) -> None:
        self.batches: list[pa.RecordBatch] = []
        for path in files:
            reader = ipc.open_file(pa.memory_map(str(path), "r"))
            self.batches.extend(reader.get_batch(i) for i in range(reader.num_record_batches))
        self.batches = [b for b in self.batches if b.num_rows]
        lengths = [b.num_rows for b in self.batches]
        self.offsets: Int64s = np.cumsum([0, *lengths], dtype=np.int64)
        self.rows = int(self.offsets[-1])

    def column(self, name: str) -> pa.ChunkedArray:
        return pa.chunked_array(
            [b.column(name) for b in self.batches], type=self.batches[0].schema.field(name).type
        )

    def ints(self, name: str) -> Int64s:
        return np.asarray(self.column(name).to_numpy(), dtype=np.int64)

    def take(self, indices: Int64s, names: list[str]) -> list[pa.Array]:
        """Columns ``names`` of the rows at ``indices`` (in that order), batch by batch."""
        chunk = np.searchsorted(self.offsets, indices, side="right") - 1
        pieces: list[pa.RecordBatch] = []
        where: list[Int64s] = []
        for c in np.unique(chunk):
            here = np.nonzero(chunk == c)[0]
            local = indices[here] - self.offsets[c]
            pieces.append(self.batches[int(c)].select(names).take(pa.array(local)))
            where.append(here)
        table = pa.Table.from_batches(pieces).combine_chunks()
        order = np.argsort(np.concatenate(where), kind="stable")
        table = table.take(pa.array(order))
        return [table.column(n).combine_chunks() for n in names]


def _codes(column: pa.ChunkedArray) -> tuple[Int64s, list[Any]]:
    """Small-cardinality column → (code per row, distinct values; null is a value too)."""
    distinct = pc.unique(column)
    codes = pc.index_in(column, value_set=distinct, skip_nulls=False)
    return np.asarray(codes.to_numpy(), dtype=np.int64), distinct.to_pylist()


def _authority(
    rows: StagedRows, origin: Int64s, origins: list[str], timeline: Timeline
) -> tuple[Int64s, npt.NDArray[np.bool_]]:
    """Per row: the origin code of the source authoritative at its ingest time (-1 if
    nobody was elected for its market), and whether it is the row's own origin."""
    venue, venues = _codes(rows.column("venue"))
    symbol, symbols = _codes(rows.column("symbol"))
    ingest = rows.ints(INGEST_COLUMN)
    source = np.full(rows.rows, -1, dtype=np.int64)
    for v, venue_name in enumerate(venues):
        for s, symbol_name in enumerate(symbols):
            mask = (venue == v) & (symbol == s)
            held = timeline(str(venue_name or ""), str(symbol_name or ""))
            if held is None or not mask.any():
                continue
            times, names = held
            index = np.searchsorted(np.asarray(times, dtype=np.int64), ingest[mask], "right") - 1
            index[index < 0] = 0
            # A source that delivered nothing here never matches a row's origin.
            code_of = np.array([origins.index(n) if n in origins else -2 for n in names])
            source[mask] = code_of[index]
    return source, source == origin


def select(
    rows: StagedRows, dataset: str, timeline: Timeline, rank: Callable[[str], int]
) -> tuple[Int64s, list[dict[str, Any]]]:
    """Indices of the chosen rows in output order, and their per-source summary."""
    origin, origins = _codes(rows.column("origin"))
    ranks = np.array([rank(str(o)) for o in origins], dtype=np.int64)
    row_rank = ranks[origin]
    seq = rows.ints("seq")
    idx = np.arange(rows.rows, dtype=np.int64)
    source, authoritative = _authority(rows, origin, [str(o) for o in origins], timeline)
    if dataset == "trade":
        trade_id = rows.column("trade_id")
        missing = np.asarray(pc.is_null(trade_id).to_numpy(zero_copy_only=False), dtype=bool)
        ids = np.asarray(pc.fill_null(trade_id, 0).to_numpy(), dtype=np.int64)
        # A trade without an id is keyed by (origin, seq): never a cross-source duplicate.
        key_origin = np.where(missing, origin, -1)
        key_seq = np.where(missing, seq, 0)
        ids = np.where(missing, 0, ids)
        preference = np.where(authoritative, 0, 1)
        order = np.lexsort((idx, row_rank, preference, key_seq, key_origin, missing, ids))
        first = np.ones(len(order), dtype=bool)
        if len(order) > 1:
            keys = (ids, missing, key_origin, key_seq)
            same = np.ones(len(order) - 1, dtype=bool)
            for key in keys:
                ordered = key[order]
                same &= ordered[1:] == ordered[:-1]
            first[1:] = ~same
        chosen = np.sort(order[first])
    else:
        fallback = int(np.argmin(ranks))
        source = np.where(source == -1, fallback, source)
        chosen = idx[source == origin]
    ts = rows.ints(TS_COLUMN)
    output = chosen[np.lexsort((chosen, seq[chosen], row_rank[chosen], ts[chosen]))]
    return output, _summary(rows.ints(INGEST_COLUMN)[output], origin[output], origins)


def _summary(ingest: Int64s, origin: Int64s, origins: list[Any]) -> list[dict[str, Any]]:
    """:func:`partition_writer.source_summary` over the chosen rows' columns."""
    summary = []
    for code, name in sorted(enumerate(origins), key=lambda item: str(item[1])):
        stamps = np.sort(ingest[origin == code])
        if not len(stamps):
            continue
        worst = int(np.max(np.diff(stamps))) if len(stamps) > 1 else 0
        summary.append(
            {
                "source": str(name),
                "rows": len(stamps),
                "worst_freshness_seconds": round(worst / 1e9, 6),
            }
        )
    return summary


def write_window_file(
    directory: Path,
    name: str,
    files: list[Path],
    *,
    dataset: str,
    timeline: Timeline,
    rank: Callable[[str], int],
) -> int:
    """Seal ``files`` (one partition's staged rows of one window) into ``directory/name``.

    Returns the rows written; 0 (and no file) when the authority rules keep
    nothing. The file is committed by :func:`partition_writer.put_file`, so a
    redo with the same staged rows leaves it untouched.
    """
    rows = StagedRows(files)
    if not rows.rows:
        return 0
    output, summary = select(rows, dataset, timeline, rank)
    if not len(output):
        return 0
    schema = pw.file_schema(dataset, summary)

    def write(partial: Path) -> None:
        with pq.ParquetWriter(partial, schema, compression="zstd") as writer:
            for start in range(0, len(output), SLICE_ROWS):
                columns = rows.take(output[start : start + SLICE_ROWS], schema.names)
                writer.write_table(pa.Table.from_arrays(columns, schema=schema))

    pw.put_file(directory, name, write)
    return len(output)
