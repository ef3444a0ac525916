"""Validation throughput: schema + staleness + anomaly over a 1M-row trade table.

Prints, for one core:

* rows/s of :func:`validate_table` on an in-memory table (target >= 10M rows/s),
  for the table as our reader returns it (dictionary-encoded strings, in the
  reader's record-batch chunks), with plain string columns, and for a dirty
  copy (0.1 % NaN prices, 0.1 % stale rows, 100 price spikes) that exercises
  the paths which build findings;
* the time to read the same rows from Parquet, single- and multi-threaded;
* validation time as a share of read time (target <= 25 %).

Run: ``python bench/validate.py [--rows N] [--repeat K] [--symbols S]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cryptorun_daemon.data.validate import arrow_schema, read_partition_table, validate_table

T0 = 1_756_684_800_000_000_000


def make_table(rows: int, symbols: int, seed: int = 1) -> pa.Table:
    """Realistic trades: 0.5 bp noise on a 0.1 tick, lognormal sizes, ms-spaced times."""
    rng = np.random.default_rng(seed)
    ts = T0 + np.arange(rows, dtype=np.int64) * 1_000_000
    names = [f"C{i}/USD" if i else "BTC/USD" for i in range(symbols)]
    symbol = np.array(names)[rng.integers(0, symbols, rows)] if symbols > 1 else [names[0]] * rows
    return pa.table(
        {
            "ts": pa.array(ts, pa.timestamp("ns", tz="UTC")),
            "venue": pa.array(["kraken"] * rows),
            "symbol": pa.array(symbol),
            "side": pa.array(np.where(rng.random(rows) < 0.5, "buy", "sell")),
            "price": np.round((60_000 + rng.normal(0, 3, rows)) / 0.1) * 0.1,
            "qty": rng.lognormal(-3.0, 1.0, rows),
            "trade_id": np.arange(rows, dtype=np.int64),
            "ingest_ts": pa.array(
                ts + rng.integers(1_000_000, 50_000_000, rows), pa.timestamp("ns", tz="UTC")
            ),
            "origin": pa.array(["eu-central"] * rows),
            "seq": np.arange(rows, dtype=np.int64),
        },
        schema=arrow_schema("trade"),
    )


def make_dirty(table: pa.Table, seed: int = 2) -> pa.Table:
    """``table`` with 0.1 % bad rows of each kind (NaN price, stale) and 100 price spikes.

    Clean data takes the fast paths (one reduction proves a column clean); this
    shows what findings cost.
    """
    rng = np.random.default_rng(seed)
    rows = table.num_rows
    price = table.column("price").to_numpy().copy()
    ingest = table.column("ingest_ts").cast(pa.int64()).to_numpy().copy()
    price[rng.integers(0, rows, rows // 1000)] = np.nan
    spikes = rng.integers(0, rows, min(100, rows // 100))
    price[spikes] *= 1.03
    stale = rng.integers(0, rows, rows // 1000)
    ingest[stale] += 120 * 1_000_000_000
    table = table.set_column(table.schema.get_field_index("price"), "price", pa.array(price))
    return table.set_column(
        table.schema.get_field_index("ingest_ts"),
        "ingest_ts",
        pa.array(ingest).cast(pa.timestamp("ns", tz="UTC")),
    )


def best_of(repeat: int, fn: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--symbols", type=int, default=1)
    args = parser.parse_args()
    # One core for numpy/Arrow compute, as the target says; Parquet reads are
    # reported both ways because the daemon reads with Arrow's thread pool.
    pa.set_cpu_count(1)
    plain = make_table(args.rows, args.symbols)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "part-000.parquet"
        pq.write_table(plain, path)
        size = os.path.getsize(path)
        encoded = read_partition_table(path)
        dirty_path = Path(tmp) / "part-001.parquet"
        pq.write_table(make_dirty(plain), dirty_path)
        dirty = read_partition_table(dirty_path)
        read_1 = best_of(
            args.repeat,
            lambda: pq.read_table(
                path, use_threads=False, read_dictionary=["venue", "symbol", "side", "origin"]
            ),
        )
        pa.set_cpu_count(os.cpu_count() or 1)
        read_n = best_of(args.repeat, lambda: read_partition_table(path))
        pa.set_cpu_count(1)
    report = validate_table(encoded, dataset="trade", tier="warm")
    validate_encoded = best_of(
        args.repeat, lambda: validate_table(encoded, dataset="trade", tier="warm")
    )
    validate_plain = best_of(
        args.repeat, lambda: validate_table(plain, dataset="trade", tier="warm")
    )
    dirty_report = validate_table(dirty, dataset="trade", tier="warm")
    validate_dirty = best_of(
        args.repeat, lambda: validate_table(dirty, dataset="trade", tier="warm")
    )
    rows = args.rows
    print(
        f"rows: {rows:,}  symbols: {args.symbols}  parquet: {size / 1e6:.1f} MB  "
        f"flagged rows: {report.result.flagged}"
    )
    print(
        f"validate (dictionary strings, as read): {validate_encoded * 1e3:8.1f} ms  "
        f"{rows / validate_encoded / 1e6:6.1f} M rows/s"
    )
    print(
        f"validate (plain strings, in memory):    {validate_plain * 1e3:8.1f} ms  "
        f"{rows / validate_plain / 1e6:6.1f} M rows/s"
    )
    print(
        f"validate (dictionary, dirty):           {validate_dirty * 1e3:8.1f} ms  "
        f"{rows / validate_dirty / 1e6:6.1f} M rows/s  "
        f"({dirty_report.result.flagged:,} rows flagged)"
    )
    print(
        f"read parquet, 1 thread:                 {read_1 * 1e3:8.1f} ms  "
        f"{rows / read_1 / 1e6:6.1f} M rows/s"
    )
    print(
        f"read parquet, {os.cpu_count()} threads:               {read_n * 1e3:8.1f} ms  "
        f"{rows / read_n / 1e6:6.1f} M rows/s"
    )
    print(f"validation / read (1 thread):  {validate_encoded / read_1:6.1%}  (target <= 25%)")
    print(f"validation / read ({os.cpu_count()} threads): {validate_encoded / read_n:6.1%}")
    target = rows / validate_encoded >= 10e6
    print(
        f"throughput target >= 10M rows/s: {'met' if target else 'NOT met'}; "
        f"<= 25% of read: {'met' if validate_encoded <= 0.25 * read_1 else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
