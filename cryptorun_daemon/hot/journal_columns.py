"""Journal chunks to staged columns: the sealer's fast path, one Arrow call per chunk.

The streaming sealer (``hot/sealer.py``) stages every journal record once. Done
row by row, that was most of an origin's CPU at high rates (a decoded dict, a
``Row`` and a dozen list appends per record; docs/BENCHMARKS.md). Here a whole
chunk of journal lines (a few MiB) is parsed by Arrow's JSON reader against an
explicit schema and grouped by (window, partition) with compute kernels, so
Python runs per group, not per record.

One verdict with the row path: :func:`stage_groups` returns ``None`` — and the
sealer then reads the chunk row by row, as before — for any chunk where the
two could differ or where the row path has per-record decisions to make: a
line Arrow's reader refuses (a duplicate key, a value of another JSON type
than the schema's, a number out of range), a record without origin, seq,
ingest time, dataset, venue or symbol, a dataset other than ``trade`` and
``book``, a negative timestamp, or a record of a window that is sealed or
older than the state remembers (late records). Values Arrow accepts convert
exactly as ``pa.array`` converts the decoded Python values (tests/unit/
test_hot_staging_columns.py compares the staged tables).

Blocking (file reads, parsing): call from the sealer's worker thread.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from cryptorun_daemon.data.validate.schema import arrow_schema
from cryptorun_daemon.hot.staging import INGEST_COLUMN, TS_COLUMN, staging_schema

CHUNK_BYTES: Final = 4 << 20  # about 15,000 records: bounds one parse like BATCH_ROWS did
HOUR_NS: Final = 3600 * 1_000_000_000
DATASETS: Final = ("trade", "book")
_STAMPED: Final = ("origin", "seq")


def _field_types() -> list[pa.Field]:
    """Every dataset's record fields, timestamps as the int64 nanoseconds lines carry."""
    types: dict[str, pa.DataType] = {}
    for dataset in DATASETS:
        for f in arrow_schema(dataset):
            if f.name in _STAMPED:
                continue
            kind = pa.int64() if pa.types.is_timestamp(f.type) else f.type
            if types.setdefault(f.name, kind) != kind:
                raise TypeError(f"field {f.name!r} has two types across datasets")
    return [pa.field(name, kind) for name, kind in types.items()]


# A journal line: a record ({"o","s","i","d","f"}) or a control line ({"ctl", ...}).
LINE_SCHEMA: Final = pa.schema(
    [
        pa.field("ctl", pa.string()),
        pa.field("o", pa.string()),
        pa.field("s", pa.int64()),
        pa.field("i", pa.int64()),
        pa.field("d", pa.string()),
        pa.field("f", pa.struct(_field_types())),
    ]
)
_PARSE: Final = pj.ParseOptions(explicit_schema=LINE_SCHEMA, unexpected_field_behavior="ignore")


def iter_chunks(
    path: Path, start: int, stop: int | None, chunk_bytes: int = CHUNK_BYTES
) -> Iterator[tuple[int, int, bytes]]:
    """``(start, end, data)``: the complete lines of ``path`` in ``[start, stop)``, in chunks.

    ``data`` is whole lines with their newlines; a trailing line without its
    newline (being written, or torn) is not returned, nor anything past ``stop``
    (a line boundary). A line longer than ``chunk_bytes`` comes in one chunk.
    Error handling: ``FileNotFoundError`` when the segment is gone.
    """
    with path.open("rb") as handle:
        handle.seek(start)
        pending = b""
        here = start
        while stop is None or here < stop:
            want = chunk_bytes if stop is None else min(chunk_bytes, stop - here - len(pending))
            data = handle.read(want) if want > 0 else b""
            buffer = pending + data if pending else data
            cut = buffer.rfind(b"\n") + 1
            if cut == 0:
                if not data:
                    return  # a partial line at the end
                pending = buffer
                continue
            yield here, here + cut, buffer[:cut]
            here += cut
            pending = buffer[cut:]
            if not data:
                return


@dataclass
class StagedChunk:
    """A chunk's stageable records grouped by (window start, warm partition directory)."""

    groups: dict[tuple[int, Path], pa.Table] = field(default_factory=dict)
    windows: set[int] = field(default_factory=set)
    rows: int = 0


def stage_groups(
    data: bytes,
    *,
    length_ns: int,
    partition_dir: Callable[[str, str, str, int], Path],
    is_late: Callable[[int], bool],
) -> StagedChunk | None:
    """Parse whole journal lines and group their records into staging tables.

    ``partition_dir(dataset, venue, symbol, ts)`` names a record's warm
    partition; ``is_late(window)`` says whether the row path would treat a
    window's records as late. Returns ``None`` when the chunk must be read row
    by row (module docstring); an empty :class:`StagedChunk` for a chunk of
    control lines only.

    Error handling: ``PathRejectedError`` from ``partition_dir``, as the row
    path raises it.
    """
    try:
        table = pj.read_json(
            io.BytesIO(data), read_options=pj.ReadOptions(use_threads=False), parse_options=_PARSE
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    table = table.filter(pc.is_null(table.column("ctl")))
    out = StagedChunk()
    if table.num_rows == 0:
        return out
    fields = pa.Table.from_struct_array(table.column("f").combine_chunks())
    required = [table.column(name) for name in ("o", "s", "i", "d", "f")]
    required += [fields.column("venue"), fields.column("symbol")]
    if any(column.null_count for column in required):
        return None
    datasets = table.column("d")
    if not pc.all(pc.is_in(datasets, pa.array(DATASETS))).as_py():
        return None
    ingest = table.column("i")
    ts = pc.coalesce(fields.column("ts"), ingest)  # a record without ts: its ingest time
    if pc.min(ts).as_py() < 0:
        return None
    window = _floor(ts, length_ns)
    windows = set(pc.unique(window).to_pylist())
    if any(is_late(w) for w in windows):
        return None
    hour = pc.divide(ts, HOUR_NS)
    keys = (window, datasets, fields.column("venue"), fields.column("symbol"), hour)
    columns = {
        "origin": table.column("o"),
        "seq": table.column("s"),
        TS_COLUMN: ts,
        INGEST_COLUMN: ingest,
    }
    # Rows ordered by group (a stable sort keeps journal order within each group),
    # then each group is a zero-copy slice: one take per column for the whole chunk
    # instead of a mask and a filter per column per group.
    order, runs = _group_runs(keys)
    ordered: dict[str, pa.Array] = {}
    start = 0
    for end in runs:
        first = order[start].as_py()
        w, dataset, venue, symbol, h = (key[first].as_py() for key in keys)
        schema = staging_schema(dataset)
        arrays = []
        for f in schema:
            column = ordered.get(f.name)
            if column is None:
                source = columns.get(f.name)
                if source is None:
                    source = fields.column(f.name)
                column = ordered[f.name] = pc.take(source, order)
            arrays.append(pc.cast(column.slice(start, end - start), f.type))
        staged = pa.Table.from_arrays(arrays, schema=schema)
        directory = partition_dir(dataset, venue, symbol, h * HOUR_NS)
        out.groups[(w, directory)] = staged
        out.rows += staged.num_rows
        start = end
    out.windows = windows
    return out


def _group_runs(keys: tuple[pa.ChunkedArray, ...]) -> tuple[pa.Array, list[int]]:
    """A stable order of the rows by their key tuple, and where each group ends in it.

    Each key column is dictionary-encoded and the codes combined into one group
    number per row (mixed radix: a few windows, datasets, venues, symbols and
    hours per chunk, far from overflowing int64).
    """
    group: pa.Array | None = None
    for key in keys:
        encoded = pc.dictionary_encode(key.combine_chunks())
        codes = pc.cast(encoded.indices, pa.int64())
        group = (
            codes if group is None else pc.add(pc.multiply(group, len(encoded.dictionary)), codes)
        )
    assert group is not None
    order = pc.sort_indices(group)  # stable: journal order within a group
    ends = pc.run_end_encode(pc.take(group, order)).run_ends.to_pylist()
    return order, ends


def _floor(values: pa.ChunkedArray, step: int) -> pa.ChunkedArray:
    """``value // step * step`` for non-negative int64 values."""
    return pc.multiply(pc.divide(values, step), step)
