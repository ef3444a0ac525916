"""Schema registry, per-record schema check, file-level and row-level batch checks."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from cryptorun_daemon.data.validate import (
    REGISTRY,
    ValidationError,
    arrow_schema,
    fingerprint,
    get_schema,
    records_from_table,
    schema_batch,
    schema_check,
    table_schema_errors,
)

T0 = 1_756_684_800_000_000_000


def trade(**overrides: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "ts": T0,
        "venue": "kraken",
        "symbol": "BTC/USD",
        "side": "buy",
        "price": 60000.0,
        "qty": 0.5,
        "trade_id": 1,
        "ingest_ts": T0 + 1_000_000,
        "origin": "eu-central",
        "seq": 7,
    }
    record.update(overrides)
    return record


def book(**overrides: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "ts": T0,
        "venue": "kraken",
        "symbol": "BTC/USD",
        "bids_px": [100.0, 99.5],
        "bids_qty": [1.0, 2.0],
        "asks_px": [100.5, 101.0],
        "asks_qty": [1.0, 0.0],
        "checksum": None,
        "suspect": False,
        "ingest_ts": T0,
        "origin": "us-east",
        "seq": 1,
    }
    record.update(overrides)
    return record


def test_registry_is_versioned_and_latest_resolves() -> None:
    """Schemas are registered as name@version and a bare name resolves to the latest."""
    assert set(REGISTRY) >= {"trade@1", "book@1"}
    assert get_schema("trade") is REGISTRY["trade@1"]
    with pytest.raises(KeyError, match="unknown schema"):
        get_schema("candle")


def test_arrow_schema_has_utc_nanosecond_timestamps_and_list_levels() -> None:
    """Writers get timestamp[ns, UTC] times, float64 prices and list<float64> book levels."""
    trade_schema = arrow_schema("trade")
    assert trade_schema.field("ts").type == pa.timestamp("ns", tz="UTC")
    assert trade_schema.field("price").type == pa.float64()
    assert not trade_schema.field("price").nullable
    book_schema = arrow_schema("book")
    assert book_schema.field("bids_px").type == pa.list_(pa.float64())
    assert book_schema.field("checksum").nullable


def test_fingerprint_is_stable_and_distinguishes_schemas() -> None:
    """The fingerprint is a fixed sha256 of the field list, different per schema."""
    assert fingerprint("trade") == fingerprint(get_schema("trade@1"))
    assert fingerprint("trade").startswith("sha256:")
    assert len(fingerprint("trade")) == len("sha256:") + 64
    assert fingerprint("trade") != fingerprint("book")
    # Relaxing the extra-field policy does not change what the bytes look like.
    assert fingerprint(get_schema("trade").with_extra("ignore")) == fingerprint("trade")


def test_valid_records_pass() -> None:
    """A well-formed trade and book record produce no error."""
    assert schema_check("trade")(trade()) is None
    assert schema_check("book")(book()) is None


@pytest.mark.parametrize(
    ("overrides", "field", "reason"),
    [
        ({"price": -1.0}, "price", "out_of_domain"),
        ({"price": 0.0}, "price", "out_of_domain"),
        ({"price": math.nan}, "price", "not_finite"),
        ({"price": math.inf}, "price", "not_finite"),
        ({"qty": -0.1}, "qty", "out_of_domain"),
        ({"qty": "1"}, "qty", "wrong_type"),
        ({"side": "short"}, "side", "out_of_domain"),
        ({"ts": 1.5}, "ts", "wrong_type"),
        ({"trade_id": True}, "trade_id", "wrong_type"),
        ({"venue": None}, "venue", "null"),
        ({"symbol": "BTCUSD"}, "symbol", "bad_format"),
        ({"origin": "EU"}, "origin", "bad_format"),
        ({"seq": -1}, "seq", "out_of_domain"),
        ({"extra": 1}, "extra", "extra_field"),
    ],
)
def test_bad_trade_fields_name_the_field(
    overrides: dict[str, Any], field: str, reason: str
) -> None:
    """Each kind of bad value is reported on the right field with a stable reason."""
    error = schema_check("trade")(trade(**overrides))
    assert error is not None
    assert (error.check, error.field, error.reason) == ("schema", field, reason)


def test_missing_field_is_reported() -> None:
    """A record without a required field names that field with reason ``missing``."""
    record = trade()
    del record["price"]
    error = schema_check("trade")(record)
    assert error is not None
    assert (error.field, error.reason) == ("price", "missing")


def test_extra_fields_can_be_ignored() -> None:
    """Under the ``ignore`` policy unknown fields pass."""
    assert schema_check(get_schema("trade").with_extra("ignore"))(trade(note="x")) is None


@pytest.mark.parametrize(
    ("overrides", "field", "reason"),
    [
        ({"bids_px": [100.0, -1.0]}, "bids_px", "out_of_domain"),
        ({"asks_px": [math.nan, 101.0]}, "asks_px", "not_finite"),
        ({"bids_qty": [1.0]}, "bids_qty", "length_mismatch"),
        ({"asks_qty": [1.0, -2.0]}, "asks_qty", "out_of_domain"),
        ({"suspect": 0}, "suspect", "wrong_type"),
        ({"checksum": 1.5}, "checksum", "wrong_type"),
    ],
)
def test_bad_book_fields(overrides: dict[str, Any], field: str, reason: str) -> None:
    """Book level lists are checked element by element and against their partner list."""
    error = schema_check("book")(book(**overrides))
    assert error is not None
    assert (error.field, error.reason) == (field, reason)


def test_error_is_strict_json() -> None:
    """A NaN value serialises as the string "NaN", never as an invalid JSON literal."""
    error = schema_check("trade")(trade(price=math.nan))
    assert isinstance(error, ValidationError)
    decoded = json.loads(error.to_json())
    assert decoded == {
        "check": "schema",
        "field": "price",
        "value": "NaN",
        "reason": "not_finite",
        "expected": error.expected,
        "lag": 0,
    }


def test_file_level_errors_for_missing_wrong_and_extra_columns() -> None:
    """A table with a missing, a wrong-typed and an extra column lists all three."""
    table = pa.Table.from_pylist([trade()], schema=arrow_schema("trade"))
    table = (
        table.drop_columns(["qty"])
        .set_column(table.schema.get_field_index("price") - 0, "price", pa.array(["60000"]))
        .append_column("note", pa.array(["x"]))
    )
    errors = {(e.field, e.reason) for e in table_schema_errors(table.schema, get_schema("trade"))}
    assert errors == {("qty", "missing"), ("price", "wrong_type"), ("note", "extra_field")}


def test_dictionary_strings_and_utc_aliases_are_accepted() -> None:
    """Dictionary-encoded strings (as Parquet readers return them) satisfy string columns."""
    table = pa.Table.from_pylist([trade()], schema=arrow_schema("trade"))
    table = table.set_column(1, "venue", table.column("venue").dictionary_encode())
    assert table_schema_errors(table.schema, get_schema("trade")) == []
    naive = table.set_column(0, "ts", table.column("ts").cast(pa.timestamp("ns")))
    assert [e.field for e in table_schema_errors(naive.schema, get_schema("trade"))] == ["ts"]


def test_batch_flags_the_right_rows_and_fields() -> None:
    """Row-level batch findings carry the failing rows, field and reason."""
    rows = [
        trade(),
        trade(price=math.nan),
        trade(price=-5.0),
        trade(qty=-1.0),
        trade(side="x"),
        trade(symbol="bad"),
    ]
    table = pa.Table.from_pylist(rows, schema=arrow_schema("trade"))
    result = schema_batch(table, "trade")
    assert result.mask.tolist() == [False, True, True, True, True, True]
    found = {(g.field, g.reason): g.rows.tolist() for g in result.groups}
    assert found == {
        ("price", "not_finite"): [1],
        ("price", "out_of_domain"): [2],
        ("qty", "out_of_domain"): [3],
        ("side", "out_of_domain"): [4],
        ("symbol", "bad_format"): [5],
    }
    nan_group = next(g for g in result.groups if g.reason == "not_finite")
    assert math.isnan(nan_group.examples[0][1].value)


def test_batch_null_in_non_nullable_column() -> None:
    """A null in a non-nullable column is a ``null`` finding, not a crash."""
    schema = arrow_schema("trade")
    loose = pa.schema([f.with_nullable(True) for f in schema])
    table = pa.Table.from_pylist([trade(), trade(price=None)], schema=loose)
    result = schema_batch(table, "trade")
    assert [(g.field, g.reason, g.rows.tolist()) for g in result.groups] == [("price", "null", [1])]


def test_batch_book_lengths_and_levels() -> None:
    """Book batch checks find bad levels and mismatched list lengths."""
    rows = [book(), book(bids_qty=[1.0]), book(asks_px=[100.5, 0.0])]
    table = pa.Table.from_pylist(rows, schema=arrow_schema("book"))
    result = schema_batch(table, "book")
    first = {row: (g.field, g.reason) for row, g in result.first_group_per_row().items()}
    assert first == {1: ("bids_qty", "length_mismatch"), 2: ("asks_px", "out_of_domain")}


def test_records_from_table_round_trips_timestamps_as_ints() -> None:
    """Rows come back as feed-shaped dicts with int nanosecond timestamps."""
    table = pa.Table.from_pylist([trade()], schema=arrow_schema("trade"))
    (record,) = records_from_table(table)
    assert record == trade()
    assert isinstance(record["ts"], int)
    assert np.isclose(record["price"], 60000.0)
