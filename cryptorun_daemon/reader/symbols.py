"""One spelling per market: ``BTC-USD`` everywhere a reader looks.

The exchange and the record schema (``trade@1``, ``book@1``) spell a market
``BTC/USD``; the partition path spells it ``BTC-USD`` because ``/`` cannot be
in a path segment. Sealed files keep the exchange form in their ``symbol``
column (their bytes and hashes never change), so the mapping is applied on
the way out, in one place: every table, batch and stream the reader returns
carries the path form, which is also what ``pyarrow.dataset`` and DuckDB
return with hive partitioning on. Filters accept either spelling.

A partition holds one market, so when a file's footer statistics prove its
``symbol`` column holds only that market's name (every row group's min and
max equal it), the column is not decoded at all: the reader builds it from
the path key (:func:`constant_symbol_array`), which costs less than the
decode it saves. Otherwise each value is rewritten (``/`` → ``-``).
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cryptorun_daemon.storage.layout import symbol_segment

SYMBOL_COLUMN: Final = "symbol"


def canonical_symbol(symbol: str) -> str:
    """``BTC/USD`` or ``BTC-USD`` → ``BTC-USD``, checked against the layout's symbol rule.

    Error handling: :class:`~cryptorun_daemon.errors.PathRejectedError` for
    anything that is not ``BASE-QUOTE`` in ``[A-Z0-9]`` (so never a path escape).
    """
    return symbol_segment(symbol)


def canonical_symbol_column(batch: pa.RecordBatch) -> pa.RecordBatch:
    """``batch`` with its ``symbol`` column in path form (no-op when absent or not text).

    Vectorised (one ``replace_substring`` per batch), so it costs a fraction
    of decoding the column.
    """
    index = batch.schema.get_field_index(SYMBOL_COLUMN)
    if index < 0 or not pa.types.is_string(batch.schema.field(index).type):
        return batch
    column = pc.replace_substring(batch.column(index), pattern="/", replacement="-")
    return batch.set_column(index, batch.schema.field(index), column)


def file_holds_only(metadata: Any, symbol: str) -> bool:
    """Whether a Parquet footer's statistics prove every ``symbol`` value is ``symbol``.

    ``symbol`` is the path form; the exchange form (``BTC/USD``) counts as
    the same market. False when a row group lacks statistics or has nulls.
    """
    names = [metadata.schema.column(i).path for i in range(metadata.num_columns)]
    if SYMBOL_COLUMN not in names:
        return False
    index = names.index(SYMBOL_COLUMN)
    spellings = {symbol, symbol.replace("-", "/")}
    for group in range(metadata.num_row_groups):
        stats = metadata.row_group(group).column(index).statistics
        if stats is None or not stats.has_min_max or stats.null_count:
            return False
        if stats.min != stats.max or stats.min not in spellings:
            return False
    return True


def constant_symbol_array(symbol: str, rows: int) -> pa.Array:
    """A string array of ``rows`` copies of ``symbol``, built from two numpy buffers."""
    data = symbol.encode()
    offsets = np.arange(rows + 1, dtype=np.int32) * len(data)
    values = np.frombuffer(data * rows, dtype=np.uint8) if rows else np.zeros(0, np.uint8)
    return pa.StringArray.from_buffers(rows, pa.py_buffer(offsets), pa.py_buffer(values))
