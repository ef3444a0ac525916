"""What researchers query with: DuckDB and Polars over the reader's output, and one spelling.

The raw-file tests pin the documented symbol mapping (docs/DATA_FACADE.md):
sealed files keep the exchange spelling ``BTC/USD`` in their ``symbol``
column, the path key and everything the reader returns say ``BTC-USD``.
"""

from __future__ import annotations

import io
from pathlib import Path

import duckdb
import polars as pl
import pyarrow.dataset as ds
import pytest

from cryptorun_daemon.cli.main import main
from cryptorun_daemon.reader import open_store
from tests.harness.research_data import at, flag_rows, key, write_part


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """Two hours of BTC-USD (5 rows each, one flagged) and one of ETH-USD."""
    for hour in range(2):
        directory = write_part(tmp_path, key("warm", hour=hour), 5, first=hour * 10)
    flag_rows(directory, "part-0000.parquet", [("staleness", "late", [(0, 1)])], rows=5)
    write_part(tmp_path, key("warm", hour=0, symbol="ETH-USD"), 3, first=100)
    return tmp_path


def test_duckdb_queries_the_returned_arrow_table(root: Path) -> None:
    """DuckDB scans the returned table in place; counts and sums agree with the reader's."""
    trades = open_store(root).read("trade", at(0), at(2))
    con = duckdb.connect()
    con.register("trades", trades)
    rows = con.execute(
        "SELECT symbol, count(*), sum(trade_id) FROM trades GROUP BY symbol ORDER BY symbol"
    ).fetchall()
    assert rows == [("BTC-USD", 9, sum([0, 1, 2, 3, 4, 11, 12, 13, 14])), ("ETH-USD", 3, 303)]


def test_polars_reads_the_returned_table(root: Path) -> None:
    """polars.from_arrow takes the table as is; the flagged row is already gone."""
    frame = pl.from_arrow(open_store(root).read("trade", at(0), at(2), symbols=["BTC-USD"]))
    assert isinstance(frame, pl.DataFrame)
    assert frame.height == 9
    assert frame["symbol"].unique().to_list() == ["BTC-USD"]
    assert 10 not in frame["trade_id"].to_list()


@pytest.mark.parametrize("hive", [True, False])
def test_raw_files_pin_the_documented_symbol_mapping(root: Path, hive: bool) -> None:
    """Raw files: hive on gives the path form, hive off the file's BTC/USD; the mapping unifies."""
    glob = f"{root}/warm/trade/**/*.parquet"
    flag = "true" if hive else "false"
    con = duckdb.connect()
    raw = con.execute(
        f"SELECT DISTINCT symbol FROM read_parquet('{glob}', hive_partitioning={flag}) ORDER BY 1"
    ).fetchall()
    mapped = con.execute(
        f"SELECT DISTINCT replace(symbol, '/', '-') FROM read_parquet('{glob}', "
        f"hive_partitioning={flag}) ORDER BY 1"
    ).fetchall()
    assert raw == ([("BTC-USD",), ("ETH-USD",)] if hive else [("BTC/USD",), ("ETH/USD",)])
    assert mapped == [("BTC-USD",), ("ETH-USD",)]
    dataset = ds.dataset(
        root / "warm" / "trade", format="parquet", partitioning="hive" if hive else None
    )
    spelled = set(dataset.to_table(columns=["symbol"]).column("symbol").to_pylist())
    assert spelled == ({"BTC-USD", "ETH-USD"} if hive else {"BTC/USD", "ETH/USD"})


@pytest.mark.parametrize("hive", [True, False])
def test_reader_output_has_one_spelling_in_both_hive_modes(
    root: Path, tmp_path: Path, hive: bool
) -> None:
    """An export by `cryptorun read`, stored under symbol=BTC-USD/, reads BTC-USD either way."""
    export = tmp_path / "export" / "venue=kraken" / "symbol=BTC-USD"
    export.mkdir(parents=True)
    target = export / "data.parquet"
    argv = ["read", "trade", "--root", str(root), "--start", "2025-09-01T00:00:00Z"]
    argv += ["--end", "2025-09-01T02:00:00Z", "--symbol", "BTC/USD", "--format", "parquet"]
    assert main([*argv, "-o", str(target)], out=io.StringIO()) == 0
    flag = "true" if hive else "false"
    glob = f"{tmp_path}/export/**/*.parquet"
    spelled = (
        duckdb.connect()
        .execute(f"SELECT DISTINCT symbol FROM read_parquet('{glob}', hive_partitioning={flag})")
        .fetchall()
    )
    assert spelled == [("BTC-USD",)]
    dataset = ds.dataset(
        tmp_path / "export", format="parquet", partitioning="hive" if hive else None
    )
    assert set(dataset.to_table(columns=["symbol"]).column("symbol").to_pylist()) == {"BTC-USD"}
    assert pl.read_parquet(target)["symbol"].unique().to_list() == ["BTC-USD"]
