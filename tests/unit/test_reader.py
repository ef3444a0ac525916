"""The research reader's rules, on hand-built partitions with known rows."""

from __future__ import annotations

import json
import os
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from cryptorun_daemon.errors import PathRejectedError, ReadError, SchemaDriftError, UsageError
from cryptorun_daemon.reader import METADATA_KEY, open_store
from cryptorun_daemon.storage.seal import seal_partition
from cryptorun_daemon.storage.superseded import superseded_version_dir
from tests.harness.research_data import (
    DAY,
    at,
    flag_rows,
    key,
    manifest_of,
    trade_rows,
    write_part,
    write_rows,
)


def provenance(table: pa.Table) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(table.schema.metadata[METADATA_KEY])
    return document


def ids(table: pa.Table) -> list[int]:
    return [int(v) for v in table.column("trade_id").to_pylist()]


# --- point-in-time -------------------------------------------------------------------


def test_window_on_exact_hour_edges_reads_exactly_those_hours(tmp_path: Path) -> None:
    """[01:00, 04:00) reads hours 01, 02, 03 — the hour ending at `end` is in, 00 and 04 are out."""
    for hour in range(6):
        write_part(tmp_path, key("warm", hour=hour), 5, first=hour * 100)
    table = open_store(tmp_path).read("trade", at(1), at(4))
    assert ids(table) == [h * 100 + i for h in (1, 2, 3) for i in range(5)]
    parts = provenance(table)["parts"]
    assert [p["partition"].rsplit("/", 1)[1] for p in parts] == ["hour=01", "hour=02", "hour=03"]
    first_ts = table.column("ts")[0].as_py()
    last_ts = table.column("ts")[-1].as_py()
    assert first_ts == at(1) + timedelta(seconds=100)  # row ids start at 100 in hour 01
    assert last_ts < at(4)


def test_window_on_exact_day_edges_reads_whole_cold_days_only(tmp_path: Path) -> None:
    """Cold days: [D+1, D+2) reads day D+1 only; a day crossing `end` is left out entirely."""
    for offset in range(3):
        write_part(tmp_path, key("cold", day=DAY + timedelta(days=offset)), 4, first=offset * 10)
    store = open_store(tmp_path)
    assert ids(store.read("trade", at(24), at(48))) == [10, 11, 12, 13]
    # End in the middle of the third day: that day crosses `end` and is out.
    assert ids(store.read("trade", at(24), at(60))) == [10, 11, 12, 13]
    # Start in the middle of the first day: that day crosses `start` and is out.
    assert ids(store.read("trade", at(6), at(72))) == [10, 11, 12, 13, 20, 21, 22, 23]


def test_partition_crossing_end_is_excluded(tmp_path: Path) -> None:
    """An hour beginning before `end` but ending after it is never read: nothing at or after end."""
    write_part(tmp_path, key("warm", hour=3), 5, first=300)
    write_part(tmp_path, key("warm", hour=2), 5, first=200)
    table = open_store(tmp_path).read("trade", at(2), at(3, minute=30))
    assert ids(table) == [200, 201, 202, 203, 204]
    assert pc.max(table.column("ts")).as_py() < at(3)


def test_unsealed_partition_is_excluded_unless_asked_for(tmp_path: Path) -> None:
    """A partition without _SUCCESS is skipped (and counted); include_unsealed reads it, marked."""
    write_part(tmp_path, key("warm", hour=0), 3)
    write_part(tmp_path, key("warm", hour=1), 3, first=100, seal=False)
    store = open_store(tmp_path)
    stream = store.batches("trade", at(0), at(2))
    rows = sum(b.num_rows for b in stream)
    assert rows == 3
    assert stream.summary.unsealed_skipped == 1
    table = store.read("trade", at(0), at(2), include_unsealed=True)
    assert ids(table) == [0, 1, 2, 100, 101, 102]
    assert [p["version"] for p in provenance(table)["parts"]] == ["live", "unsealed"]


# --- as-of -----------------------------------------------------------------------------


def test_as_of_before_and_after_a_late_fill(tmp_path: Path) -> None:
    """A late fill re-seals an hour in place; as_of before it sees the hour as first sealed."""
    partition = key("warm", hour=5)
    directory = write_part(tmp_path, partition, 4, sealed_at=at(6, minute=1))
    # The late fill: a new file in the same hour, re-sealed later (the writer keeps the
    # previous manifest under _superseded/, its files stay in the live partition).
    write_rows(
        tmp_path,
        partition,
        trade_rows(partition, 2, first=50),
        name="late-fill-1.parquet",
        seal=False,
    )
    seal_partition(directory, writer_region="eu-central", epoch=1, sealed_at=at(7))
    store = open_store(tmp_path)

    before_seal = store.read("trade", at(5), at(6), as_of=at(6))
    assert before_seal.num_rows == 0
    between = store.read("trade", at(5), at(6), as_of=at(6, minute=30))
    assert ids(between) == [0, 1, 2, 3]
    assert provenance(between)["parts"][0]["version"].startswith("_superseded/")
    after = store.read("trade", at(5), at(6), as_of=at(8))
    assert sorted(ids(after)) == [0, 1, 2, 3, 50, 51]
    assert provenance(after)["parts"][0]["version"] == "live"
    assert sorted(ids(store.read("trade", at(5), at(6)))) == [0, 1, 2, 3, 50, 51]


def test_as_of_reads_the_superseded_version_current_then(tmp_path: Path) -> None:
    """A replica's superseded copy (moved to _superseded/) is what as_of between the seals reads."""
    partition = key("warm", hour=2)
    old_dir = write_part(tmp_path, partition, 3, first=10, sealed_at=at(3))
    held = manifest_of(old_dir)
    target = superseded_version_dir(tmp_path, held)
    target.parent.mkdir(parents=True)
    shutil.move(str(old_dir), str(target))  # what replication/commit.py does with a held copy
    write_part(tmp_path, partition, 5, first=20, sealed_at=at(9))
    store = open_store(tmp_path)
    then = store.read("trade", at(0), at(12), as_of=at(4))
    assert ids(then) == [10, 11, 12]
    part = provenance(then)["parts"][0]
    assert part["version"] == f"_superseded/{target.name}"
    assert part["manifest_content_hash"] == held.content_hash
    assert ids(store.read("trade", at(0), at(12), as_of=at(10))) == [20, 21, 22, 23, 24]
    assert ids(store.read("trade", at(0), at(12))) == [20, 21, 22, 23, 24]
    assert store.read("trade", at(0), at(12), as_of=at(2, minute=59)).num_rows == 0


def test_as_of_with_a_version_whose_file_is_gone_fails_loudly(tmp_path: Path) -> None:
    """A kept manifest whose file vanished cannot be read as it was: ReadError, not fewer rows."""
    partition = key("warm", hour=1)
    directory = write_part(tmp_path, partition, 2, sealed_at=at(2))
    (directory / "part-0000.parquet").unlink()
    write_part(tmp_path, partition, 2, first=5, name="part-0001.parquet", seal=False)
    seal_partition(directory, writer_region="eu-central", epoch=1, sealed_at=at(4))
    with pytest.raises(ReadError, match=r"part-0000\.parquet"):
        open_store(tmp_path).read("trade", at(0), at(6), as_of=at(3))


# --- quarantine ------------------------------------------------------------------------


@pytest.fixture
def flagged_store(tmp_path: Path) -> Path:
    """One hour of 10 rows; rows 2-3 flagged for staleness, rows 3-4 as anomalies."""
    directory = write_part(tmp_path, key("warm", hour=0), 10)
    flag_rows(
        directory,
        "part-0000.parquet",
        [("staleness", "ts 90s behind ingest", [(2, 4)]), ("anomaly", "price spike", [(3, 5)])],
        rows=10,
    )
    return tmp_path


@pytest.mark.parametrize("batch_rows", [3, 65_536])
def test_quarantine_drop_removes_listed_rows(flagged_store: Path, batch_rows: int) -> None:
    """drop (the default) returns every row but the listed ones, across batch boundaries too."""
    store = open_store(flagged_store, batch_rows=batch_rows)
    stream = store.batches("trade", at(0), at(1))
    streamed = pa.Table.from_batches(list(stream), schema=stream.schema)
    assert ids(streamed) == [0, 1, 5, 6, 7, 8, 9]
    assert stream.summary.rows_dropped == 3
    table = store.read("trade", at(0), at(1))
    assert ids(table) == [0, 1, 5, 6, 7, 8, 9]
    assert "quarantined" not in table.column_names


@pytest.mark.parametrize("batch_rows", [3, 65_536])
def test_quarantine_keep_flags_rows_with_their_reasons(
    flagged_store: Path, batch_rows: int
) -> None:
    """keep returns all rows with `quarantined` and the reasons of every finding on the row."""
    store = open_store(flagged_store, batch_rows=batch_rows)
    stream = store.batches("trade", at(0), at(1), quarantine="keep")
    table = pa.Table.from_batches(list(stream), schema=stream.schema)
    assert ids(table) == list(range(10))
    assert table.column("quarantined").to_pylist() == [i in (2, 3, 4) for i in range(10)]
    reasons = table.column("quarantine_reason").to_pylist()
    assert reasons[:2] == [None, None]
    assert reasons[2] == "staleness: ts 90s behind ingest"
    assert reasons[3] == "staleness: ts 90s behind ingest; anomaly: price spike"
    assert reasons[4] == "anomaly: price spike"
    assert store.read("trade", at(0), at(1), quarantine="keep").equals(table)


def test_quarantine_only_returns_just_the_flagged_rows(flagged_store: Path) -> None:
    """only returns the listed rows alone, with their reasons."""
    table = open_store(flagged_store, batch_rows=3).read("trade", at(0), at(1), quarantine="only")
    assert ids(table) == [2, 3, 4]
    assert table.column("quarantined").to_pylist() == [True] * 3
    summary = provenance(table)["summary"]
    assert summary["rows_flagged"] == 3
    assert summary["rows_returned"] == 3


def test_unreadable_sidecar_refuses_the_read(flagged_store: Path) -> None:
    """A sidecar that cannot be parsed fails the read rather than returning flagged rows."""
    sidecar = key("warm", hour=0).directory(flagged_store) / "_quarantine.json"
    sidecar.write_text("{not json")
    with pytest.raises(ReadError, match="sidecar"):
        open_store(flagged_store).read("trade", at(0), at(1))


# --- tier cascade ----------------------------------------------------------------------


def test_day_in_cold_and_warm_is_read_once_from_cold(tmp_path: Path) -> None:
    """A day sealed in cold is read from cold only; the next day (warm only) from warm."""
    write_part(tmp_path, key("cold", day=DAY), 24, first=0)
    for hour in range(24):
        write_part(tmp_path, key("warm", hour=hour), 1, first=hour)  # the same day, hourly
    for hour in range(2):
        next_day = key("warm", hour=hour, day=DAY + timedelta(days=1))
        write_part(tmp_path, next_day, 1, first=1000 + hour)
    store = open_store(tmp_path)
    stream = store.batches("trade", at(0), at(26))
    table = pa.Table.from_batches(list(stream), schema=stream.schema)
    assert ids(table) == [*range(24), 1000, 1001]
    assert stream.summary.tiers == {"cold": 1, "warm": 2}
    assert stream.summary.shadowed == 24
    tiers = [p["tier"] for p in json.loads(stream.schema.metadata[METADATA_KEY])["parts"]]
    assert tiers == ["cold", "warm", "warm"]
    # Asking for warm alone reads the hours instead.
    assert store.read("trade", at(0), at(24), tiers=["warm"]).num_rows == 24


# --- schema drift -----------------------------------------------------------------------


def _drifted(table: pa.Table) -> pa.Table:
    """A later schema: qty narrowed to float32 upstream, a new `fee` column, no `origin`."""
    table = table.drop_columns(["origin"])
    table = table.set_column(
        table.schema.get_field_index("qty"), "qty", table.column("qty").cast(pa.float32())
    )
    return table.append_column("fee", pa.array([0.5] * table.num_rows))


def test_schema_drift_is_unified_losslessly(tmp_path: Path) -> None:
    """Different fingerprints read as one table: missing columns null, float32 widened."""
    write_part(tmp_path, key("warm", hour=0), 2)
    partition = key("warm", hour=1)
    write_rows(tmp_path, partition, _drifted(trade_rows(partition, 2, first=10)))
    table = open_store(tmp_path).read("trade", at(0), at(2))
    assert table.schema.field("qty").type == pa.float64()
    assert table.column("fee").to_pylist() == [None, None, 0.5, 0.5]
    assert table.column("origin").to_pylist() == ["eu-central", "eu-central", None, None]
    assert table.column("qty").to_pylist() == [1.0] * 4


def test_schema_drift_refused_names_both_fingerprints(tmp_path: Path) -> None:
    """on_drift=refuse, or a column with no lossless common type, fails naming both fingerprints."""
    first = write_part(tmp_path, key("warm", hour=0), 2)
    partition = key("warm", hour=1)
    second = write_rows(tmp_path, partition, _drifted(trade_rows(partition, 2, first=10)))
    prints = {manifest_of(first).schema_fingerprint, manifest_of(second).schema_fingerprint}
    store = open_store(tmp_path)
    with pytest.raises(SchemaDriftError) as refused:
        store.read("trade", at(0), at(2), on_drift="refuse")
    assert set(refused.value.fingerprints) == prints
    for fingerprint in prints:
        assert str(fingerprint) in str(refused.value)

    partition = key("warm", hour=2)
    text_price = trade_rows(partition, 2)
    text_price = text_price.set_column(4, "price", text_price.column("price").cast(pa.string()))
    third = write_rows(tmp_path, partition, text_price)
    with pytest.raises(SchemaDriftError, match="price") as incompatible:
        store.read("trade", at(0), at(3))
    assert manifest_of(third).schema_fingerprint in incompatible.value.fingerprints


# --- symbols, provenance, filters ----------------------------------------------------


def test_symbol_is_canonical_and_filters_accept_both_spellings(tmp_path: Path) -> None:
    """Files hold BTC/USD; the reader returns BTC-USD, and either spelling selects the market."""
    write_part(tmp_path, key("warm", hour=0), 2)
    write_part(tmp_path, key("warm", hour=0, symbol="ETH-USD"), 3)
    store = open_store(tmp_path)
    assert set(store.read("trade", at(0), at(1)).column("symbol").to_pylist()) == {
        "BTC-USD",
        "ETH-USD",
    }
    for spelling in ("BTC/USD", "BTC-USD"):
        table = store.read("trade", at(0), at(1), symbols=[spelling])
        assert table.column("symbol").to_pylist() == ["BTC-USD", "BTC-USD"]


def test_provenance_names_tier_partition_and_manifest_of_each_part(tmp_path: Path) -> None:
    """Schema metadata lists each part's tier, partition, manifest hash and row counts."""
    directory = write_part(tmp_path, key("warm", hour=0), 3)
    table = open_store(tmp_path).read("trade", at(0), at(1), columns=["ts", "price"])
    assert table.column_names == ["ts", "price"]
    (part,) = provenance(table)["parts"]
    manifest = manifest_of(directory)
    assert part["tier"] == "warm"
    assert part["partition"] == manifest.partition
    assert part["manifest_content_hash"] == manifest.content_hash
    assert part["rows_read"] == 3
    assert part["rows_returned"] == 3


def test_batches_stream_in_time_order(tmp_path: Path) -> None:
    """batches yields many small batches whose ts never goes backwards across hours."""
    for hour in (2, 0, 1):
        write_part(tmp_path, key("warm", hour=hour), 7, first=hour * 100)
    batches = list(open_store(tmp_path, batch_rows=2).batches("trade", at(0), at(3)))
    assert len(batches) > 3
    assert max(b.num_rows for b in batches) <= 2
    stamps = [t for b in batches for t in b.column("ts").to_pylist()]
    assert stamps == sorted(stamps)
    assert len(stamps) == 21


# --- hostile input ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"dataset": "../trade"}, PathRejectedError),
        ({"dataset": "trade/../../x"}, PathRejectedError),
        ({"venues": ["../.."]}, PathRejectedError),
        ({"symbols": ["../../etc"]}, PathRejectedError),
        ({"symbols": ["BTC-USD/.."]}, PathRejectedError),
        ({"tiers": ["../warm"]}, PathRejectedError),
        ({"columns": ["ts; DROP"]}, UsageError),
        ({"quarantine": "all"}, UsageError),
    ],
)
def test_hostile_request_values_are_refused(
    tmp_path: Path, options: dict[str, Any], error: type[Exception]
) -> None:
    """Values that could name a path outside the root are refused before any path is built."""
    store = open_store(tmp_path)
    dataset = options.pop("dataset", "trade")
    with pytest.raises(error):
        store.read(dataset, at(0), at(1), **options)


def test_symlinked_folders_are_never_followed(tmp_path: Path) -> None:
    """A sealed partition reachable only through a symlink (to outside the root) is not read."""
    outside = tmp_path / "outside"
    root = tmp_path / "root"
    write_part(outside, key("warm", hour=0, symbol="ETH-USD"), 3)
    write_part(root, key("warm", hour=0), 2)
    venue_dir = root / "warm" / "trade" / "venue=kraken"
    os.symlink(
        outside / "warm" / "trade" / "venue=kraken" / "symbol=ETH-USD", venue_dir / "symbol=ETH-USD"
    )
    os.symlink(outside / "warm" / "trade" / "venue=kraken", root / "warm" / "trade" / "venue=evil")
    table = open_store(root).read("trade", at(0), at(1))
    assert table.column("symbol").to_pylist() == ["BTC-USD", "BTC-USD"]


def test_malformed_window_is_refused(tmp_path: Path) -> None:
    """An empty, reversed or naive window is a UsageError, not an empty read."""
    store = open_store(tmp_path)
    with pytest.raises(UsageError, match="empty or reversed"):
        store.read("trade", at(2), at(1))
    with pytest.raises(UsageError, match="timezone-aware"):
        store.read("trade", at(0).replace(tzinfo=None), at(1))
    with pytest.raises(UsageError, match="exclude"):
        store.read("trade", at(0), at(1), as_of=at(1), include_unsealed=True)


def test_symbol_column_not_provably_constant_is_rewritten_value_by_value(tmp_path: Path) -> None:
    """A file whose footer cannot prove one market still comes out in the BTC-USD spelling."""
    partition = key("warm", hour=0)
    table = trade_rows(partition, 2)
    table = table.set_column(2, "symbol", pa.array(["BTC/USD", "BTC-USD"]))
    write_rows(tmp_path, partition, table)
    store = open_store(tmp_path)
    assert store.read("trade", at(0), at(1)).column("symbol").to_pylist() == ["BTC-USD"] * 2
    only_symbol = store.read("trade", at(0), at(1), columns=["symbol"])
    assert only_symbol.column_names == ["symbol"]
    assert only_symbol.column("symbol").to_pylist() == ["BTC-USD"] * 2
    write_part(tmp_path, key("warm", hour=1), 3)
    constant = store.read("trade", at(1), at(2), columns=["symbol"])
    assert constant.column("symbol").to_pylist() == ["BTC-USD"] * 3


# --- time order ------------------------------------------------------------------------


def _at_seconds(partition_start: Any, table: pa.Table, seconds: list[float]) -> pa.Table:
    """``table`` with ``ts`` = partition start + ``seconds`` (sorted, as writers write)."""
    base = int(partition_start.timestamp()) * 1_000_000_000
    stamps = pa.array([base + int(s * 1e9) for s in seconds], type=pa.timestamp("ns", tz="UTC"))
    return table.set_column(0, "ts", stamps)


@pytest.mark.parametrize("batch_rows", [2, 65_536])
def test_markets_sharing_hours_come_out_in_time_order(tmp_path: Path, batch_rows: int) -> None:
    """Two markets in the same hours are merged by ts, in the table and in small batches."""
    for hour in range(2):
        for offset, symbol in ((0.0, "BTC-USD"), (0.5, "ETH-USD")):
            partition = key("warm", hour=hour, symbol=symbol)
            first = hour * 100 + (0 if symbol == "BTC-USD" else 50)
            rows = _at_seconds(partition.start, trade_rows(partition, 5, first=first),
                               [i + offset for i in range(5)])  # fmt: skip
            write_rows(tmp_path, partition, rows)
    expected = [h * 100 + base + i for h in (0, 1) for i in range(5) for base in (0, 50)]
    store = open_store(tmp_path, batch_rows=batch_rows)
    table = store.read("trade", at(0), at(2))
    assert ids(table) == expected
    stream = store.batches("trade", at(0), at(2), columns=["trade_id", "symbol"])
    streamed = pa.Table.from_batches(list(stream), schema=stream.schema)
    assert streamed.column_names == ["trade_id", "symbol"]
    assert ids(streamed) == expected
    assert streamed.column("symbol").to_pylist()[:2] == ["BTC-USD", "ETH-USD"]


def test_late_fill_rows_are_merged_into_their_hour(tmp_path: Path) -> None:
    """A late-fill file's rows come out at their ts, not after the hour's first file."""
    partition = key("warm", hour=0)
    first = _at_seconds(partition.start, trade_rows(partition, 4), [0, 1, 2, 3])
    write_rows(tmp_path, partition, first, seal=False)
    late = _at_seconds(partition.start, trade_rows(partition, 2, first=10), [0.5, 2.5])
    write_rows(tmp_path, partition, late, name="late-fill-1.parquet")
    table = open_store(tmp_path, batch_rows=1).read("trade", at(0), at(1))
    assert ids(table) == [0, 10, 1, 2, 11, 3]
    stream = open_store(tmp_path, batch_rows=1).batches("trade", at(0), at(1))
    assert [int(v) for b in stream for v in b.column("trade_id").to_pylist()] == [
        0,
        10,
        1,
        2,
        11,
        3,
    ]


def test_cold_day_and_another_markets_warm_hours_interleave(tmp_path: Path) -> None:
    """A cold day of one market and warm hours of another overlap: merged by ts."""
    cold = key("cold", symbol="BTC-USD")
    write_rows(tmp_path, cold, _at_seconds(cold.start, trade_rows(cold, 3), [0, 7200, 14400]))
    for hour in range(3):
        warm = key("warm", hour=hour, symbol="ETH-USD")
        write_rows(
            tmp_path, warm, _at_seconds(warm.start, trade_rows(warm, 1, first=100 + hour), [60])
        )
    stream = open_store(tmp_path).batches("trade", at(0), at(24))
    table = pa.Table.from_batches(list(stream), schema=stream.schema)
    assert ids(table) == [0, 100, 101, 1, 102, 2]


def _corrupt_data_pages(path: Path) -> None:
    """Overwrite the start of the column data, keeping the size and the footer intact."""
    with path.open("r+b") as handle:
        handle.seek(4)
        handle.write(b"\xff" * 64)


def test_undecodable_file_fails_the_read_naming_it(tmp_path: Path) -> None:
    """A file whose pages cannot be decoded raises ReadError naming it, streamed or not."""
    write_part(tmp_path, key("warm", hour=0), 50)
    directory = write_part(tmp_path, key("warm", hour=1), 50, first=100)
    _corrupt_data_pages(directory / "part-0000.parquet")
    store = open_store(tmp_path)
    with pytest.raises(ReadError, match=r"hour=01/part-0000\.parquet"):
        store.read("trade", at(0), at(2))
    with pytest.raises(ReadError, match=r"hour=01/part-0000\.parquet"):
        list(store.batches("trade", at(0), at(2)))


def test_bucket_urls_are_refused_for_now(tmp_path: Path) -> None:
    """open_store takes a local root; an object-storage URL is a clear UsageError."""
    with pytest.raises(UsageError, match="bucket URLs"):
        open_store("s3://research-bucket/eu-central")


def test_as_of_finds_a_version_whose_live_folder_is_gone(tmp_path: Path) -> None:
    """A partition kept only under _superseded/ (live folder moved away) was still current then."""
    partition = key("warm", hour=4)
    old_dir = write_part(tmp_path, partition, 2, first=40, sealed_at=at(5))
    target = superseded_version_dir(tmp_path, manifest_of(old_dir))
    target.parent.mkdir(parents=True)
    shutil.move(str(old_dir), str(target))
    store = open_store(tmp_path)
    assert ids(store.read("trade", at(0), at(6), as_of=at(6))) == [40, 41]
    assert store.read("trade", at(0), at(6)).num_rows == 0
