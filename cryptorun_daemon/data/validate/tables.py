"""Arrow plumbing shared by the batch checks: strings, numbers, rows.

Batch checks read columns through these helpers so that a string column is
dictionary-encoded once, numbers arrive as float64 with nulls as NaN, and a
row can be turned back into the feed-shaped dict the per-record checks take.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cryptorun_daemon.data.validate.findings import BoolMask, RowIndex


def as_mask(array: pa.ChunkedArray | pa.Array) -> BoolMask:
    return np.asarray(array.to_numpy(zero_copy_only=False), dtype=np.bool_)


def encode_string_column(column: pa.ChunkedArray) -> pa.Array:
    if pa.types.is_dictionary(column.type):
        return column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    n = len(column)
    if n and column.null_count == 0:
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
    """``table`` with every string column dictionary-encoded, each encoded once.

    Domain checks and stream grouping then look at each distinct string once
    instead of at every row; tables read by ``read_partition_table`` already
    come this way and pass through untouched.
    """
    for index, column in enumerate(table.columns):
        value_type = column.type.value_type if pa.types.is_dictionary(column.type) else column.type
        if pa.types.is_string(value_type) and not (
            pa.types.is_dictionary(column.type) and column.num_chunks == 1
        ):
            table = table.set_column(index, table.field(index).name,
                                     encode_string_column(column))
    return table


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
    return [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(),
                                                                      strict=True)]
