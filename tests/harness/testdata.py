"""Synthetic trade partitions for tests and benchmarks (deterministic per seed).

Rows follow the validation layer's trade schema (``arrow_schema("trade")``:
ts, venue, symbol, side, price, qty, trade_id, ingest_ts, origin, seq), so
generated partitions pass schema validation.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cryptorun_daemon.config import Tier
from cryptorun_daemon.data.validate.schema import arrow_schema
from cryptorun_daemon.storage.layout import PartitionKey
from cryptorun_daemon.storage.seal import seal_partition

TRADE_SCHEMA: Any = arrow_schema("trade")


def trade_table(
    rows: int,
    *,
    start: datetime,
    span: timedelta,
    venue: str,
    symbol: str,
    origin: str,
    seed: int,
) -> Any:
    """``rows`` trades spread evenly over ``[start, start + span)``."""
    rng = np.random.default_rng(seed)
    start_ns = int(start.timestamp()) * 1_000_000_000
    span_ns = int(span.total_seconds()) * 1_000_000_000
    ts = np.sort(rng.integers(start_ns, start_ns + span_ns, size=rows, dtype=np.int64))
    ingest = ts + rng.integers(1_000_000, 50_000_000, size=rows, dtype=np.int64)
    price = 50_000 * np.exp(np.cumsum(rng.normal(0, 1e-4, size=rows)))
    qty = rng.exponential(0.05, size=rows)
    sides = np.where(rng.random(rows) < 0.5, "buy", "sell")
    pair = symbol.replace("-", "/")
    return pa.table(
        {
            "ts": pa.array(ts, type=pa.timestamp("ns", tz="UTC")),
            "venue": pa.array([venue] * rows, type=pa.string()),
            "symbol": pa.array([pair] * rows, type=pa.string()),
            "side": pa.array(sides, type=pa.string()),
            "price": pa.array(price, type=pa.float64()),
            "qty": pa.array(qty, type=pa.float64()),
            "trade_id": pa.array(np.arange(seed * 10_000_000, seed * 10_000_000 + rows)),
            "ingest_ts": pa.array(ingest, type=pa.timestamp("ns", tz="UTC")),
            "origin": pa.array([origin] * rows, type=pa.string()),
            "seq": pa.array(np.arange(rows, dtype=np.int64)),
        },
        schema=TRADE_SCHEMA,
    )


def partition_trades(key: PartitionKey, rows: int, *, origin: str, seed: int) -> Any:
    """``rows`` trades of ``key``'s market spread over its whole span."""
    return trade_table(
        rows,
        start=key.start,
        span=key.end - key.start,
        venue=key.venue,
        symbol=key.symbol,
        origin=origin,
        seed=seed,
    )


def write_trade_partition(
    root: Path,
    key: PartitionKey,
    *,
    rows: int,
    files: int = 1,
    origin: str = "eu-central",
    seed: int = 1,
    compression: str = "snappy",
) -> Path:
    """Write ``files`` Parquet files of trades into ``key``'s directory (not sealed)."""
    directory = key.directory(root)
    directory.mkdir(parents=True, exist_ok=True)
    per_file = max(1, rows // files)
    for index in range(files):
        table = partition_trades(key, per_file, origin=origin, seed=seed * 1000 + index)
        pq.write_table(table, directory / f"part-{index:04d}.parquet", compression=compression)
    return directory


def seed_partitions(
    root: Path,
    *,
    tier: Tier = "warm",
    start: datetime,
    count: int,
    symbols: Sequence[str] = ("BTC-USD",),
    venue: str = "kraken",
    rows: int = 1000,
    files: int = 1,
    region: str = "eu-central",
    epoch: int = 1,
    seal: bool = True,
    compression: str = "snappy",
) -> list[Path]:
    """Write (and seal) ``count`` consecutive hourly (or daily, for cold) partitions per symbol."""
    step = timedelta(days=1) if tier == "cold" else timedelta(hours=1)
    written = []
    for i in range(count):
        moment = start + i * step
        for s_index, symbol in enumerate(symbols):
            key = PartitionKey(
                day=moment.date(),
                hour=None if tier == "cold" else moment.hour,
                tier=tier,
                dataset="trade",
                venue=venue,
                symbol=symbol,
            )
            directory = write_trade_partition(
                root,
                key,
                rows=rows,
                files=files,
                origin=region,
                seed=i * 100 + s_index + 1,
                compression=compression,
            )
            if seal:
                seal_partition(directory, writer_region=region, epoch=epoch)
            written.append(directory)
    return written
