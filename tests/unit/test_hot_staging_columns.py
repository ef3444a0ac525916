"""The sealer's per-batch conversions: journal lines to row parts, rows to staged tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cryptorun_daemon.errors import ProtocolError
from cryptorun_daemon.hot.partition_writer import Row
from cryptorun_daemon.hot.record import decode_line, encode_control, encode_record, record_parts
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


# ------------------------------------------------- whole chunks (journal_columns)
def _chunk_lines() -> list[bytes]:
    from cryptorun_daemon.config import FeedConfig
    from cryptorun_daemon.hot.feeds_builtin import SyntheticFeed

    feed = SyntheticFeed(
        FeedConfig(
            name="s",
            kind="synthetic",
            venue="syn",
            symbols=("BTC/USD", "ETH/USD"),
            rate=1.0,
            book_depth=3,
        )
    )
    start = NS // feed.period_ns - 50  # the chunk spans an hour boundary
    lines = [encode_control({"ctl": "replid", "o": "eu", "r": "r" * 40, "s": 0})]
    for offset, record in enumerate(feed.events(start, start + 100, ingest_ts=NS + 5)):
        origin = "eu" if offset % 3 else "us"
        lines.append(encode_record(origin, offset + 1, NS + 5, record.dataset, record.fields).line)
    # A record without ts (staged at its ingest time), with an unknown field, an int price.
    fields = {"venue": "syn", "symbol": "BTC/USD", "price": 7, "qty": 1.5, "extra": {"a": 1}}
    lines.append(encode_record("eu", 500, NS + 9, "trade", fields).line)
    return lines


def _row_path_groups(lines: list[bytes], length: int) -> dict[tuple[int, Path], pa.Table]:
    """What the sealer's row path stages for these lines: rows grouped, then rows_table."""
    from cryptorun_daemon.hot import partition_writer as pw

    groups: dict[tuple[int, Path], list[Row]] = {}
    for line in lines:
        if line.startswith(b'{"ctl"'):
            continue
        row = Row(*record_parts(line))
        key = (
            row.ts // length * length,
            pw.partition_dir(Path("/root"), row.dataset, row.venue, row.symbol, row.ts),
        )
        groups.setdefault(key, []).append(row)
    return {key: rows_table(rows, staging_schema(rows[0].dataset)) for key, rows in groups.items()}


def test_a_chunk_staged_in_columns_equals_the_row_path() -> None:
    """A journal chunk (control line, trades and books of two origins across an hour and a
    window boundary, a record without ts, an unknown field, an int price) is staged by the
    columnar path into exactly the groups and tables the row-by-row path stages."""
    from cryptorun_daemon.hot import partition_writer as pw
    from cryptorun_daemon.hot.journal_columns import stage_groups

    lines = _chunk_lines()
    length = 600 * 10**9
    staged = stage_groups(
        b"\n".join(lines) + b"\n",
        length_ns=length,
        partition_dir=lambda d, v, s, ts: pw.partition_dir(Path("/root"), d, v, s, ts),
        is_late=lambda window: False,
    )
    assert staged is not None  # the fast path took it (no silent fallback)
    expected = _row_path_groups(lines, length)
    assert sorted(staged.groups) == sorted(expected)
    assert len(expected) > 4  # hours, windows, datasets and symbols all split it
    for key, table in expected.items():
        assert staged.groups[key].equals(table), key
    assert staged.rows == len(lines) - 1
    assert staged.windows == {window for window, _ in expected}


@pytest.mark.parametrize(
    "extra",
    [
        b'{"o":"eu","s":9,"i":1,"d":"trade","f":{"venue":"syn","symbol":"B/U","price":1,"price":2}}',
        b'{"o":"eu","s":9,"i":1,"d":"trade","f":{"venue":"syn","symbol":"B/U","side":5}}',
        b'{"o":"eu","s":9,"i":1,"d":"trade","f":{"symbol":"B/U"}}',
        b'{"o":"eu","s":9,"i":1,"d":"candle","f":{"venue":"syn","symbol":"B/U"}}',
        b'{"o":"eu","s":9,"i":-5,"d":"trade","f":{"venue":"syn","symbol":"B/U"}}',
        b'{"o":"eu","s":9,"i":1,"d":"trade","f":{"venue":"syn","symbol":"B/U","ts":1.5}}',
        b'{"o":"eu","i":1,"d":"trade","f":{"venue":"syn","symbol":"B/U"}}',
    ],
)
def test_a_chunk_the_columnar_path_cannot_vouch_for_goes_row_by_row(extra: bytes) -> None:
    """A duplicate key, a value of another JSON type, a missing venue or seq, an unknown
    dataset, a negative time or a float ts anywhere in a chunk sends the whole chunk
    to the row path (None), which decides as it always did."""
    from cryptorun_daemon.hot.journal_columns import stage_groups

    lines = [*_chunk_lines(), extra]
    staged = stage_groups(
        b"\n".join(lines) + b"\n",
        length_ns=600 * 10**9,
        partition_dir=lambda d, v, s, ts: Path("/root") / d,
        is_late=lambda window: False,
    )
    assert staged is None


def test_a_chunk_with_a_late_window_goes_row_by_row_and_control_lines_stage_nothing() -> None:
    """Records of a window the sealer calls late (sealed, or older than its state) are the
    row path's to handle; a chunk of control lines only stages nothing."""
    from cryptorun_daemon.hot.journal_columns import stage_groups

    lines = _chunk_lines()
    length = 600 * 10**9
    windows = {Row(*record_parts(line)).ts // length * length for line in lines[1:]}
    late = min(windows)
    staged = stage_groups(
        b"\n".join(lines) + b"\n",
        length_ns=length,
        partition_dir=lambda d, v, s, ts: Path("/root") / d,
        is_late=lambda window: window == late,
    )
    assert staged is None
    control = stage_groups(
        lines[0] + b"\n",
        length_ns=length,
        partition_dir=lambda d, v, s, ts: Path("/root") / d,
        is_late=lambda window: False,
    )
    assert control is not None
    assert (control.groups, control.rows) == ({}, 0)


def test_chunks_are_whole_lines_within_the_range(tmp_path: Path) -> None:
    """iter_chunks returns the range's complete lines, contiguous, cut at newlines, a line
    longer than the chunk size whole, nothing past ``stop``, no trailing partial line."""
    from cryptorun_daemon.hot.journal_columns import iter_chunks

    lines = [b"a" * n for n in (3, 50, 7, 200, 1, 9)]
    path = tmp_path / "seg"
    path.write_bytes(b"\n".join(lines) + b"\npartial")
    chunks = list(iter_chunks(path, 0, None, chunk_bytes=16))
    assert b"".join(data for _, _, data in chunks) == b"\n".join(lines) + b"\n"
    assert all(data.endswith(b"\n") for _, _, data in chunks)
    assert [start for start, _, _ in chunks[1:]] == [end for _, end, _ in chunks[:-1]]
    stop = len(b"\n".join(lines[:3])) + 1
    assert b"".join(d for _, _, d in iter_chunks(path, 4, stop, chunk_bytes=16)) == (
        b"\n".join(lines[1:3]) + b"\n"
    )
