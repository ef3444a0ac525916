"""The sealer's per-batch conversions: journal lines to row parts, rows to staged tables."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cryptorun_daemon.errors import ProtocolError
from cryptorun_daemon.hot.partition_writer import Row
from cryptorun_daemon.hot.record import decode_line, encode_record, record_parts
from cryptorun_daemon.hot.staging import INGEST_COLUMN, TS_COLUMN, rows_table, staging_schema

NS = 1_767_225_600_000_000_000


def _pylist_table(rows: list[Row], schema: pa.Schema) -> pa.Table:
    """What staging built before: one dict per row through ``from_pylist``."""
    records = [
        {
            **row.fields,
            "origin": row.origin,
            "seq": row.seq,
            TS_COLUMN: row.ts,
            INGEST_COLUMN: row.ingest_ns,
        }
        for row in rows
    ]
    return pa.Table.from_pylist(records, schema=schema)


def test_column_built_tables_equal_the_per_row_dict_tables() -> None:
    """Trades and books, with missing fields (null), nulls, unknown fields (ignored), a
    missing ts (the ingest time) and stamped keys inside the fields (the row's own origin
    and seq win), give the same staged table column by column as row by row."""
    trades = [
        Row("eu", 1, NS + 1, "trade", {"ts": NS, "venue": "k", "symbol": "BTC/USD", "price": 1.5}),
        Row("eu", 2, NS + 2, "trade", {"venue": "k", "symbol": "BTC/USD", "price": None}),
        Row("us", 3, NS + 3, "trade", {"ts": NS, "venue": "k", "symbol": "B/U", "extra": [1]}),
        Row("eu", 4, NS + 4, "trade", {"ts": NS, "venue": "k", "symbol": "B/U", "origin": "x"}),
        Row("eu", 5, NS + 5, "trade", {"ts": NS, "qty": 2, "trade_id": 9, "side": "buy"}),
    ]
    books = [
        Row("eu", 6, NS, "book", {"ts": NS, "bids_px": [1.0, 2], "asks_qty": None}),
        Row("eu", 7, NS, "book", {"ts": NS, "suspect": True, "checksum": 5, "seq": 99}),
    ]
    for rows in (trades, books):
        schema = staging_schema(rows[0].dataset)
        assert rows_table(rows, schema).equals(_pylist_table(rows, schema))


def test_a_value_the_column_cannot_hold_fails_as_before() -> None:
    """A string where the schema has a float fails the conversion (as from_pylist did)."""
    rows = [Row("eu", 1, NS, "trade", {"ts": NS, "price": "cheap"})]
    schema = staging_schema("trade")
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError)):
        _pylist_table(rows, schema)
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError)):
        rows_table(rows, schema)


def _reference_parts(line: bytes) -> tuple[Any, ...]:
    body = decode_line(line)
    return body["o"], body["s"], body["i"], body["d"], body["f"]


def _outcome(parse: Any, line: bytes) -> tuple[str, Any]:
    try:
        return ("ok", parse(line))
    except (ProtocolError, KeyError) as exc:
        return ("error", type(exc).__name__)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(
        [
            encode_record("eu", 3, NS, "trade", {"ts": NS, "price": 1.5}).line,
            encode_record("eu", 4, NS, "book", {"bids_px": [1.0, 2]}).line,
            b'{"o":"eu","s":1.0,"i":1,"d":"trade","f":{}}',
            b'{"o":"eu","s":1,"i":1,"d":"trade","f":{"p":NaN}}',
            b'{"o":"eu","s":1,"i":1,"d":"trade"}',
            b'{"o":"eu","s":1,"s":2,"i":1,"d":"trade","f":{}}',
            b'{"o":7,"s":"x","i":null,"d":[],"f":1}',
            b"[1]",
            b"",
        ]
    ),
    st.binary(max_size=3),
)
def test_row_parts_are_what_the_dict_decode_gives(base: bytes, tail: bytes) -> None:
    """record_parts returns what decoding the line into a dict and looking the five keys
    up returns, and fails the same way (ProtocolError, KeyError) where that fails."""
    for line in (base, base + tail):
        assert _outcome(record_parts, line) == _outcome(_reference_parts, line)
