"""Reading a partition file for validation: the same table, in bounded memory."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from cryptorun_daemon.data.validate.batch import read_partition_table
from cryptorun_daemon.storage.layout import hourly_key
from tests.harness.testdata import write_trade_partition

T0 = datetime(2025, 9, 1, tzinfo=UTC)

#: Run in a fresh interpreter: Arrow's peak (``max_memory``) is per process.
PEAK_OF_ONE_READ = """
import json, sys
import pyarrow as pa
from pathlib import Path
from cryptorun_daemon.data.validate.batch import read_partition_table
from cryptorun_daemon.runtime.allocator import decode_pool
table = read_partition_table(Path(sys.argv[1]))
print(json.dumps({
    "peak": decode_pool().max_memory(),
    "default_peak": pa.default_memory_pool().max_memory(),
    "table": table.nbytes,
}))
"""


def _hourly_file(root: Path, rows: int) -> Path:
    key = hourly_key("warm", "trade", "kraken", "BTC/USD", T0)
    directory = write_trade_partition(root, key, rows=rows)
    return next(directory.glob("*.parquet"))


def test_the_table_read_equals_a_whole_file_read(tmp_path: Path) -> None:
    """Column by column, the table is the one a whole-file read gives: same columns,
    values, types (strings dictionary-encoded) and schema metadata."""
    path = _hourly_file(tmp_path, rows=2_000)
    strings = [f.name for f in pq.read_schema(path) if pa.types.is_string(f.type)]
    whole = pq.read_table(path, read_dictionary=strings)
    table = read_partition_table(path)
    assert table.equals(whole)
    assert table.schema.equals(whole.schema, check_metadata=True)


def test_decoding_one_file_peaks_near_its_table_size_in_the_decode_pool(tmp_path: Path) -> None:
    """A 100k-row hourly file decodes with its pool peaking below twice the table's
    size (a whole-file read held every column's pages and builders at once: about 3.4x),
    so the copier's max_validations concurrent validations stay small. The pool is the
    decode pool (jemalloc), not Arrow's default (mimalloc kept a validation's segments
    resident): the table's buffers never pass through the default pool."""
    path = _hourly_file(tmp_path, rows=100_000)
    out = subprocess.run(
        [sys.executable, "-c", PEAK_OF_ONE_READ, str(path)],
        check=True,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    ).stdout
    measured = json.loads(out)
    assert measured["table"] <= measured["peak"] < 2 * measured["table"], measured
    # Only decompression scratch (a column chunk's pages) passes through the default pool.
    assert measured["default_peak"] < measured["table"] / 2, measured


def test_the_decode_pool_is_jemalloc_where_arrow_has_it() -> None:
    """Arrow's Linux wheels are built with jemalloc: validation decodes there (it reuses
    its pages between files; the system allocator faulted every buffer in again)."""
    from cryptorun_daemon.runtime.allocator import decode_pool

    assert decode_pool().backend_name == "jemalloc"


def test_a_file_with_a_nested_column_is_read_whole_for_the_schema_check(tmp_path: Path) -> None:
    """A struct column spans several leaf columns: the file is read whole (not by leaf
    index, which would mismatch fields), so the schema check judges it instead of the
    read failing as if the file were unreadable."""
    path = tmp_path / "nested.parquet"
    table = pa.table(
        {
            "a": pa.array(
                [{"x": 1, "y": 2.0}], pa.struct([("x", pa.int64()), ("y", pa.float64())])
            ),
            "b": pa.array([3], pa.int64()),
            "s": pa.array(["k"], pa.string()),
        }
    )
    pq.write_table(table, path)
    read = read_partition_table(path)
    assert read.column("a").to_pylist() == [{"x": 1, "y": 2.0}]
    assert read.column("b").to_pylist() == [3]
