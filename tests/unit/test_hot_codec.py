"""The hot path's JSON codec (msgspec) keeps the contract the standard ``json`` set."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cryptorun_daemon.hot import codec
from cryptorun_daemon.hot.buffer import ReplayBuffer
from cryptorun_daemon.hot.feed import MarketRecord
from cryptorun_daemon.hot.journal import Journal
from cryptorun_daemon.hot.log import HotLog
from cryptorun_daemon.hot.record import (
    decode_line,
    encode_record,
    encode_records_batch,
    record_from_line,
)
from cryptorun_daemon.metrics import Metrics

# How every journal line was written before msgspec: ASCII escapes, ``1e-05`` floats.
_OLD_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, allow_nan=False)


@pytest.mark.parametrize(
    "fields",
    [
        {"price": float("nan")},
        {"price": float("inf")},
        {"bids_px": [1.0, float("-inf")]},
        {"nested": {"deep": [[float("nan")]]}},
    ],
)
def test_a_non_finite_float_is_refused_like_json_did(fields: dict[str, Any]) -> None:
    """msgspec would write NaN as null; the codec refuses it with ValueError instead, so
    a bad feed value never reaches disk."""
    with pytest.raises(ValueError):
        encode_record("eu", 1, 1, "trade", {"venue": "v", "symbol": "A/B", **fields})


def test_nulls_and_the_word_null_in_strings_still_encode() -> None:
    """A real None or the text "null" inside a string is not mistaken for a NaN."""
    fields = {"venue": "v", "symbol": "NULL/null", "checksum": None, "price": 1e-05}
    record = encode_record("eu", 1, 1, "trade", fields)
    assert json.loads(record.line)["f"] == fields


def test_values_json_cannot_carry_are_a_value_error() -> None:
    """An arbitrary object in the fields is a ValueError (the ingest loop counts and skips)."""
    with pytest.raises(ValueError):
        encode_record("eu", 1, 1, "trade", {"venue": "v", "symbol": "A/B", "x": object()})


@pytest.mark.parametrize(
    "raw",
    [b'{"a":NaN}', b'{"a":1e400}', b'{"a":"\\ud800"}', b'{"a":%d}' % 2**70, b'{"a":"\\u00e9"}'],
)
def test_decode_reads_whatever_json_read(raw: bytes) -> None:
    """Inputs msgspec refuses but json accepted still decode, to json's value."""
    assert repr(codec.decode(raw)) == repr(json.loads(raw))


def _old_line(body: dict[str, Any]) -> bytes:
    return _OLD_ENCODER.encode(body).encode("ascii")


def test_a_journal_written_in_the_previous_encoding_is_read_after_upgrade(tmp_path: Path) -> None:
    """A segment written by the json-module encoder (the format before msgspec) recovers
    with its replid, seq and clean close, refills the buffer, decodes to the same fields,
    and the log continues it with lines in the new encoding that read back alike."""
    fields = [
        {
            "ts": i,
            "venue": "v",
            "symbol": "A/B",
            "price": 1e-05 * i,
            "note": "caf\u00e9",
            "ingest_ts": 1_000 + i,
        }
        for i in range(1, 6)
    ]
    lines = [_old_line({"ctl": "replid", "o": "eu", "r": "r0", "s": 0})]
    lines += [
        _old_line({"o": "eu", "s": i, "i": 1_000 + i, "d": "trade", "f": f})
        for i, f in enumerate(fields, 1)
    ]
    lines.append(_old_line({"ctl": "close"}))
    assert b"\\u00e9" in lines[1]  # really the old surface form
    assert b"e-05" in lines[1]
    directory = tmp_path / "journal"
    directory.mkdir()
    (directory / "0000000001.jsonl").write_bytes(b"\n".join(lines) + b"\n")

    journal = Journal(directory, segment_bytes=1 << 20, fsync_interval=0.1, fsync_records=10)
    log = HotLog("eu", journal, ReplayBuffer(100, 1 << 20), Metrics())
    log.open()
    assert (log.replid, log.seq, log.recovered_clean) == ("r0", 5, True)
    assert [r.seq for r in log.buffer.read_from(1, max_records=10, max_bytes=1 << 20)] == [
        1,
        2,
        3,
        4,
        5,
    ]
    assert [record_from_line(line).venue for line in lines[1:6]] == ["v"] * 5
    assert [decode_line(line)["f"] for line in lines[1:6]] == fields
    new = log.append_local(MarketRecord("trade", {**fields[0], "ts": 6}))
    assert new is not None
    assert new.seq == 6
    assert decode_line(new.line)["f"]["note"] == "caf\u00e9"
    log.close()
    again = HotLog(
        "eu",
        Journal(directory, segment_bytes=1 << 20, fsync_interval=0.1, fsync_records=10),
        ReplayBuffer(100, 1 << 20),
        Metrics(),
    )
    again.open()
    assert (again.replid, again.seq) == ("r0", 6)
    again.close()


def test_a_batch_encodes_to_the_lines_one_by_one_encoding_gives_and_skips_refused_items() -> None:
    """encode_records_batch (the ingest fast path, one NaN scan per batch) gives the same
    records as encode_record per item, with consecutive seqs over the items it takes; an
    item with a NaN or an unencodable value is refused (its index returned, no seq used),
    and a real null or the word "null" does not refuse anything."""
    base = {"venue": "v", "symbol": "A/B", "price": 1.5}
    items: list[tuple[int, str, dict[str, Any]]] = [
        (10, "trade", {**base, "trade_id": 1}),
        (11, "trade", {**base, "price": float("nan")}),
        (12, "book", {**base, "checksum": None, "symbol": "null/NULL"}),
        (13, "trade", {**base, "x": object()}),
        (14, "trade", {**base, "trade_id": 2}),
    ]
    records, refused = encode_records_batch("eu", 7, items)
    assert refused == [1, 3]
    kept = [items[0], items[2], items[4]]
    expected = [encode_record("eu", 7 + i, ns, d, f) for i, (ns, d, f) in enumerate(kept)]
    assert records == expected
    clean, none_refused = encode_records_batch("eu", 1, kept)
    assert none_refused == []
    assert [r.line for r in clean] == [
        encode_record("eu", 1 + i, ns, d, f).line for i, (ns, d, f) in enumerate(kept)
    ]
    assert [(r.seq, r.venue, r.symbol, r.ingest_ns) for r in clean] == [
        (1, "v", "A/B", 10),
        (2, "v", "null/NULL", 12),
        (3, "v", "A/B", 14),
    ]
