"""One spelling per market: ``BTC-USD`` everywhere a reader looks.

The exchange and the record schema (``trade@1``, ``book@1``) spell a market
``BTC/USD``; the partition path spells it ``BTC-USD`` because ``/`` cannot be
in a path segment. Sealed files keep the exchange form in their ``symbol``
column (their bytes and hashes never change), so the mapping is applied on
the way out, in one place: every table, batch and stream the reader returns
carries the path form, which is also what ``pyarrow.dataset`` and DuckDB
return with hive partitioning on. Filters accept either spelling.
"""

from __future__ import annotations

from typing import Final

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
