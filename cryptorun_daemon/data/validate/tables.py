"""Arrow plumbing shared by the batch checks: strings, numbers, rows.

Batch checks read columns through these helpers so that a string column is
dictionary-encoded once, numbers arrive as float64 with nulls as NaN, and a
row can be turned back into the feed-shaped dict the per-record checks take.

Parquet readers hand back columns in chunks (record batches); the fast paths
work chunk by chunk on zero-copy numpy views (:func:`float_chunks`,
:func:`int64_chunks`) and only concatenate when a check has something to
report.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cryptorun_daemon.data.validate.findings import BoolMask, RowIndex


def as_mask(array: pa.ChunkedArray | pa.Array) -> BoolMask:
    return np.asarray(array.to_numpy(zero_copy_only=False), dtype=np.bool_)


_PROBES = 16  # rows looked at before betting that a column holds one value


def _probably_single(column: pa.ChunkedArray) -> bool:
    """Whether a few evenly spaced rows all equal the first (a cheap filter, not a proof)."""
    n = len(column)
    probes = pa.array(np.linspace(0, n - 1, min(n, _PROBES)).astype(np.int64))
    return len(pc.unique(column.take(probes))) == 1


def encode_string_column(column: pa.ChunkedArray) -> pa.Array:
    """One dictionary array for a string column (dictionary chunks are unified)."""
    if pa.types.is_dictionary(column.type):
        return column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    n = len(column)
    if n and column.null_count == 0 and _probably_single(column):
        first = column[0]
        # Partition columns (venue, symbol, origin) hold one value: a memcmp
        # per row proves it far faster than hashing every string.
        if pc.all(pc.equal(column, first)).as_py():
            return pa.DictionaryArray.from_arrays(
                pa.array(np.zeros(n, dtype=np.int32)), pa.array([first.as_py()], column.type)
            )
    combined = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    return pc.dictionary_encode(combined)


def encode_strings(table: pa.Table) -> pa.Table:
    """``table`` with every plain string column dictionary-encoded, each encoded once.

    Domain checks and stream grouping then look at each distinct string once
    instead of at every row. Dictionary columns (as ``read_partition_table``
    returns them) pass through untouched, chunks and all: checks read each
    chunk's dictionary, and unifying them would copy every index.
    """
    for index, column in enumerate(table.columns):
        if pa.types.is_string(column.type):
            table = table.set_column(index, table.field(index).name, encode_string_column(column))
    return table


def single_value(column: pa.ChunkedArray) -> bool:
    """True when the column holds one value in every row (no nulls, at least one row).

    Cheap for dictionary columns (each chunk's dictionary is that one value);
    a ``False`` may still be a single-valued column, which callers then treat
    the general way.
    """
    if not len(column) or column.null_count:
        return False
    if pa.types.is_dictionary(column.type):
        dictionaries = [chunk.dictionary for chunk in column.chunks if len(chunk)]
        return all(len(d) == 1 and d.equals(dictionaries[0]) for d in dictionaries)
    return _probably_single(column) and bool(pc.all(pc.equal(column, column[0])).as_py())


def float_chunks(column: pa.ChunkedArray) -> list[np.ndarray]:
    """Each chunk as float64 numpy (nulls as NaN); zero-copy for float64 without nulls."""
    return [numbers(chunk) for chunk in column.chunks]


def int64_chunks(column: pa.ChunkedArray) -> list[np.ndarray]:
    """Each chunk of an integer or timestamp column as int64 numpy, nulls as 0.

    Zero-copy for int64/timestamp[ns] chunks without nulls; callers mask
    nulls themselves.
    """
    out = []
    for chunk in column.chunks:
        as_int = chunk.view(pa.int64()) if pa.types.is_timestamp(chunk.type) else chunk
        if as_int.null_count:
            as_int = as_int.fill_null(0)
        out.append(np.asarray(as_int.to_numpy(zero_copy_only=False), dtype=np.int64))
    return out


def string_codes(column: pa.ChunkedArray) -> tuple[np.ndarray, list[str | None]]:
    """Dictionary codes (``-1`` for null) and the dictionary of a string column.

    Encoding once lets a domain check test a handful of distinct values instead
    of a million strings.
    """
    combined = encode_string_column(column)
    indices = combined.indices
    if indices.null_count:
        indices = indices.fill_null(-1)
    codes = indices.to_numpy(zero_copy_only=False)
    return codes.astype(np.int64, copy=False), combined.dictionary.to_pylist()


def value_ids(column: pa.ChunkedArray) -> tuple[np.ndarray, int]:
    """Dense ids per distinct string value (``-1`` for null) and how many there are.

    Ids follow the value, not the dictionary slot, so a dictionary that holds
    one string twice (chunks unified) still gives one id. Costs one int32
    gather per row through a table of the distinct values.
    """
    combined = encode_string_column(column)
    seen: dict[str | None, int] = {}
    slots = [seen.setdefault(v, len(seen)) for v in combined.dictionary.to_pylist()]
    # The extra last entry maps index -1 (a null, once filled) to id -1.
    lut = np.array([*slots, -1], dtype=np.int32)
    indices = combined.indices
    if indices.null_count:
        indices = indices.fill_null(-1)
    return lut[indices.to_numpy(zero_copy_only=False)], len(seen)


def numbers(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Float64 values with nulls as NaN (nulls are masked separately)."""
    if isinstance(column, pa.ChunkedArray) and column.num_chunks == 1:
        column = column.chunk(0)
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64)


def row_values(table: pa.Table, name: str, rows: RowIndex) -> list[Any]:
    column = table.column(name)
    if pa.types.is_timestamp(column.type):
        column = column.cast(pa.int64())
    taken = column.take(pa.array(rows, type=pa.int64()))
    if pa.types.is_dictionary(taken.type):
        taken = taken.cast(taken.type.value_type)
    values: list[Any] = taken.to_pylist()
    return values


def records_from_table(table: pa.Table) -> list[dict[str, Any]]:
    """The table's rows as per-record dicts, timestamps as int nanoseconds.

    This is the shape feeds produce, so per-record checks can be run over a
    file's rows (tests, offline inspection).
    """
    columns = {}
    for name in table.column_names:
        column = table.column(name)
        if pa.types.is_timestamp(column.type):
            column = column.cast(pa.int64())
        elif pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        columns[name] = column.to_pylist()
    return [
        dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)
    ]
