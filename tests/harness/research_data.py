"""Hand-built partitions with known rows for the research reader's tests.

Rows are predictable: row ``i`` of a file written for a partition starting at
``S`` has ``ts = S + (first + i) seconds`` and ``trade_id = first + i``, so a
test can say exactly which rows a read must return. Files use the writers'
trade schema (``arrow_schema("trade")``) with the exchange spelling
``BTC/USD`` in the ``symbol`` column, as the hot→warm writer produces them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from cryptorun_daemon.config import Tier
from cryptorun_daemon.data.validate.quarantine import write_sidecar
from cryptorun_daemon.data.validate.schema import arrow_schema
from cryptorun_daemon.storage.layout import PartitionKey
from cryptorun_daemon.storage.manifest import Manifest
from cryptorun_daemon.storage.seal import seal_partition

TRADE_SCHEMA: Any = arrow_schema("trade")
DAY = date(2025, 9, 1)


def at(hour: int = 0, *, day: date = DAY, minute: int = 0) -> datetime:
    """A UTC moment on ``day`` (hour may exceed 23 to reach following days)."""
    return datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(
        hours=hour, minutes=minute
    )


def key(
    tier: Tier,
    *,
    day: date = DAY,
    hour: int | None = 0,
    venue: str = "kraken",
    symbol: str = "BTC-USD",
    dataset: str = "trade",
) -> PartitionKey:
    return PartitionKey(
        day=day,
        hour=None if tier == "cold" else hour,
        tier=tier,
        dataset=dataset,
        venue=venue,
        symbol=symbol,
    )


def trade_rows(partition: PartitionKey, count: int, *, first: int = 0) -> pa.Table:
    """``count`` trades: ``ts`` = partition start + (first + i) s, ``trade_id`` = first + i."""
    start_ns = int(partition.start.timestamp()) * 1_000_000_000
    ids = list(range(first, first + count))
    ts = [start_ns + i * 1_000_000_000 for i in ids]
    return pa.table(
        {
            "ts": pa.array(ts, type=pa.timestamp("ns", tz="UTC")),
            "venue": [partition.venue] * count,
            "symbol": [partition.symbol.replace("-", "/")] * count,
            "side": ["buy" if i % 2 else "sell" for i in ids],
            "price": [100.0 + i for i in ids],
            "qty": [1.0] * count,
            "trade_id": pa.array(ids, type=pa.int64()),
            "ingest_ts": pa.array([t + 1000 for t in ts], type=pa.timestamp("ns", tz="UTC")),
            "origin": ["eu-central"] * count,
            "seq": pa.array(ids, type=pa.int64()),
        },
        schema=TRADE_SCHEMA,
    )


def write_rows(
    root: Path,
    partition: PartitionKey,
    table: pa.Table,
    *,
    name: str = "part-0000.parquet",
    seal: bool = True,
    sealed_at: datetime | None = None,
    row_group_size: int | None = None,
) -> Path:
    """Write ``table`` as one file of ``partition`` and (by default) seal it; returns the folder."""
    directory = partition.directory(root)
    directory.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, directory / name, row_group_size=row_group_size)
    if seal:
        seal_partition(directory, writer_region="eu-central", epoch=1, sealed_at=sealed_at)
    return directory


def write_part(
    root: Path,
    partition: PartitionKey,
    count: int = 10,
    *,
    first: int = 0,
    name: str = "part-0000.parquet",
    seal: bool = True,
    sealed_at: datetime | None = None,
) -> Path:
    """A partition holding :func:`trade_rows` (``count`` rows from ``first``)."""
    return write_rows(
        root,
        partition,
        trade_rows(partition, count, first=first),
        name=name,
        seal=seal,
        sealed_at=sealed_at,
    )


def flag_rows(
    directory: Path,
    file_name: str,
    findings: Sequence[tuple[str, str, Sequence[tuple[int, int]]]],
    *,
    rows: int,
) -> None:
    """Write a ``_quarantine.json`` entry for ``file_name``: (check, reason, row ranges)."""
    entry = {
        "schema": "trade@1",
        "fingerprint": "test",
        "tier": "warm",
        "region": "eu-central",
        "rows": rows,
        "flagged_rows": sum(b - a for _, _, ranges in findings for a, b in ranges),
        "validated_at": "2025-09-01T00:00:00Z",
        "findings": [
            {
                "check": check,
                "field": "ts",
                "reason": reason,
                "expected": "",
                "count": sum(b - a for a, b in ranges),
                "rows": [[a, b] for a, b in ranges],
                "examples": [],
            }
            for check, reason, ranges in findings
        ],
    }
    write_sidecar(directory / file_name, entry)


def manifest_of(directory: Path) -> Manifest:
    return Manifest.from_bytes((directory / "_manifest.json").read_bytes())
