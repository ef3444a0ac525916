"""Fast paths over chunked, dictionary-encoded tables (as Parquet readers return them)
give exactly the findings of the same rows in one plain chunk."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import given, settings
from hypothesis import strategies as st

from cryptorun_daemon.data.validate import arrow_schema, validate_table
from cryptorun_daemon.data.validate.batch import TableReport

T0 = 1_756_684_800_000_000_000
S = 1_000_000_000
STRINGS = ["venue", "symbol", "side", "origin"]


def _table(n: int, seed: int, defects: list[tuple[str, int]], symbols: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    ts = T0 + np.arange(n, dtype=np.int64) * 1_000_000
    ingest = ts + rng.integers(1_000, 50_000_000, n)
    price = np.round((100.0 + rng.normal(0.0, 0.01, n)) / 0.01) * 0.01
    qty = rng.lognormal(0.0, 1.0, n)
    side = np.where(rng.random(n) < 0.5, "buy", "sell").astype(object)
    venue = np.full(n, "kraken", dtype=object)
    symbol = np.array(["BTC/USD", "ETH/USD", "SOL/USD"], dtype=object)[rng.integers(0, symbols, n)]
    seq = np.arange(n, dtype=np.int64)
    for kind, at in defects:
        row = at % n
        if kind == "nan_price":
            price[row] = math.nan
        elif kind == "neg_qty":
            qty[row] = -1.0
        elif kind == "zero_qty":
            qty[row] = 0.0
        elif kind == "inf_price":
            price[row] = math.inf
        elif kind == "bad_side":
            side[row] = "hold"
        elif kind == "bad_venue":
            venue[row] = "Bad Venue"
        elif kind == "neg_seq":
            seq[row] = -1
        elif kind == "stale":
            ingest[row] = ts[row] + 120 * S
        elif kind == "drift":
            ingest[row] = ts[row] - 10 * S
        elif kind == "spike":
            price[row] *= 1.05
    return pa.table(
        {
            "ts": pa.array(ts, pa.timestamp("ns", tz="UTC")),
            "venue": venue.tolist(),
            "symbol": symbol.tolist(),
            "side": side.tolist(),
            "price": price,
            "qty": qty,
            "trade_id": seq.copy(),
            "ingest_ts": pa.array(ingest, pa.timestamp("ns", tz="UTC")),
            "origin": ["eu-central"] * n,
            "seq": seq,
        },
        schema=arrow_schema("trade"),
    )


def _as_read_from_parquet(table: pa.Table, row_group: int, batch: int) -> pa.Table:
    """``table`` round-tripped through Parquet: one chunk per row group, or per
    ``batch`` rows when ``batch`` > 0, with dictionary-encoded strings."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, row_group_size=row_group)
    reader = pq.ParquetFile(pa.BufferReader(sink.getvalue()), read_dictionary=STRINGS)
    if batch <= 0:
        return reader.read(use_threads=False)
    return pa.Table.from_batches(reader.iter_batches(batch_size=batch))


def _findings(report: TableReport) -> tuple[list[bool], list[tuple[str, str, str, list[int]]]]:
    return report.result.mask.tolist(), [
        (g.check, g.field, g.reason, g.rows.tolist()) for g in report.result.groups
    ]


defect_kinds = st.sampled_from(
    [
        "nan_price",
        "neg_qty",
        "zero_qty",
        "inf_price",
        "bad_side",
        "bad_venue",
        "neg_seq",
        "stale",
        "drift",
        "spike",
    ]
)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(min_value=1, max_value=3_000),
    st.integers(min_value=0, max_value=2**32 - 1),
    st.lists(st.tuples(defect_kinds, st.integers(min_value=0, max_value=10**6)), max_size=6),
    st.integers(min_value=1, max_value=3),
    st.integers(min_value=50, max_value=1_200),
    st.integers(min_value=-1, max_value=700),
)
def test_chunked_dictionary_table_gives_the_findings_of_one_plain_chunk(
    n: int,
    seed: int,
    defects: list[tuple[str, int]],
    symbols: int,
    row_group: int,
    batch: int,
) -> None:
    """Whatever the chunking and wherever a defect sits, every check flags the same rows."""
    plain = _table(n, seed, defects, symbols)
    chunked = _as_read_from_parquet(plain, row_group, batch)
    assert all(pa.types.is_dictionary(chunked.schema.field(name).type) for name in STRINGS)
    expected = _findings(validate_table(plain, dataset="trade", tier="warm"))
    assert _findings(validate_table(chunked, dataset="trade", tier="warm")) == expected


def test_staleness_with_misaligned_chunks_falls_back_to_the_full_check() -> None:
    """``ts`` and ``ingest_ts`` chunked differently still compare row by row."""
    plain = _table(1_000, 3, [("stale", 10), ("drift", 700)], 1)
    ts = plain.column("ts")
    shifted = plain.set_column(
        0,
        "ts",
        pa.chunked_array([ts.slice(0, 333).combine_chunks(), ts.slice(333).combine_chunks()]),
    )
    assert [c.num_chunks for c in (shifted.column("ts"), shifted.column("ingest_ts"))] == [2, 1]
    assert _findings(validate_table(shifted, dataset="trade", tier="warm")) == _findings(
        validate_table(plain, dataset="trade", tier="warm")
    )


def test_empty_tables_with_no_chunks_are_clean() -> None:
    """A table with no rows (and no chunks at all) validates clean for both datasets."""
    for dataset in ("trade", "book"):
        empty = pa.Table.from_batches([], schema=arrow_schema(dataset))
        report = validate_table(empty, dataset=dataset, tier="warm")
        assert report.clean
        assert report.result.mask.size == 0


def test_rows_with_a_null_symbol_are_left_out_of_every_stream() -> None:
    """Interleaved symbols in several chunks with a null key: the null row is a schema
    finding only, and the spike in the ETH stream is still found at its row."""
    plain = _table(4_000, 9, [], 2)
    symbols = plain.column("symbol").to_pylist()
    eth = [i for i, s in enumerate(symbols) if s == "ETH/USD"]
    price = plain.column("price").to_numpy().copy()
    price[eth[1_000]] *= 1.05
    symbols[eth[500]] = None
    table = plain.set_column(
        plain.schema.get_field_index("price"), "price", pa.array(price)
    ).set_column(plain.schema.get_field_index("symbol"), "symbol", pa.array(symbols, pa.string()))
    chunked = pa.Table.from_batches(table.to_batches(max_chunksize=700))
    found = {
        (g.check, g.field, g.reason): g.rows.tolist()
        for g in validate_table(chunked, dataset="trade", tier="warm").result.groups
    }
    assert found == {
        ("schema", "symbol", "null"): [eth[500]],
        ("anomaly", "price", "spike"): [eth[1_000]],
    }
