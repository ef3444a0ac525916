"""Turn one window's hot records into Parquet files in the warm partition layout, sealed.

Selection rules (issue 5, "source authority"): trades come from every source
and are deduplicated by ``(venue, symbol, trade_id)``, keeping the copy from
the source that was authoritative when it was ingested (else the best-ranked
source); books come only from the source that was authoritative at the
record's ingest time. Each partition's manifest lists the sources it used and
the worst freshness among them (the largest gap between consecutive records of
a used source: "worst-feed-wins").

Blocking (Parquet I/O and hashing): call from a worker thread.
"""

from __future__ import annotations

import itertools
import os
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from cryptorun_daemon.data.validate.schema import arrow_schema
from cryptorun_daemon.errors import StorageError
from cryptorun_daemon.storage.layout import MANIFEST_NAME, SUCCESS_MARKER, hourly_key
from cryptorun_daemon.storage.manifest import read_manifest
from cryptorun_daemon.storage.seal import seal_partition

SourceAt = Callable[[str, str, int], str | None]  # venue, symbol, ingest_ns -> source
Rank = Callable[[str], int]


@dataclass(frozen=True, slots=True)
class Row:
    """A decoded hot record on its way to Parquet."""

    origin: str
    seq: int
    ingest_ns: int
    dataset: str
    fields: dict[str, Any]

    @property
    def venue(self) -> str:
        return str(self.fields.get("venue", ""))

    @property
    def symbol(self) -> str:
        return str(self.fields.get("symbol", ""))

    @property
    def ts(self) -> int:
        value = self.fields.get("ts")
        return value if isinstance(value, int) else self.ingest_ns


def partition_dir(root: Path, dataset: str, venue: str, symbol: str, ts_ns: int) -> Path:
    """``{root}/warm/{dataset}/venue=/symbol=BASE-QUOTE/date=/hour=`` for a timestamp.

    Built through the layout's :class:`PartitionKey`, so a dataset, venue or
    symbol that breaks the segment rules (``../..``, separators) raises
    :class:`PathRejectedError` instead of naming a directory outside ``root``.
    """
    moment = datetime.fromtimestamp(ts_ns / 1e9, UTC)
    return hourly_key("warm", dataset, venue, symbol, moment).directory(root)


def select_rows(rows: Iterable[Row], source_at: SourceAt, rank: Rank) -> list[Row]:
    """Apply the authority rules to one (dataset, venue, symbol) group, sorted by ts."""
    rows = list(rows)
    if not rows:
        return []
    if rows[0].dataset == "trade":
        best: dict[Any, tuple[tuple[int, int], Row]] = {}
        for row in rows:
            authoritative = source_at(row.venue, row.symbol, row.ingest_ns) == row.origin
            preference = (0 if authoritative else 1, rank(row.origin))
            key = row.fields.get("trade_id")
            if key is None:
                key = (row.origin, row.seq)  # no id: cannot be a cross-source duplicate
            held = best.get(key)
            if held is None or preference < held[0]:
                best[key] = (preference, row)
        chosen = [row for _, row in best.values()]
    else:
        fallback = min({row.origin for row in rows}, key=rank)
        chosen = [
            row
            for row in rows
            if (source_at(row.venue, row.symbol, row.ingest_ns) or fallback) == row.origin
        ]
    chosen.sort(key=lambda r: (r.ts, rank(r.origin), r.seq))
    return chosen


def source_summary(rows: list[Row]) -> list[dict[str, Any]]:
    """Per used source: rows contributed and its worst freshness (largest ingest gap)."""
    by_source: dict[str, list[int]] = defaultdict(list)
    for row in rows:
        by_source[row.origin].append(row.ingest_ns)
    summary = []
    for source, stamps in sorted(by_source.items()):
        stamps.sort()
        worst = max((b - a for a, b in itertools.pairwise(stamps)), default=0)
        summary.append(
            {
                "source": source,
                "rows": len(stamps),
                "worst_freshness_seconds": round(worst / 1e9, 6),
            }
        )
    return summary


def existing_trade_ids(directory: Path) -> set[Any]:
    """Trade ids already in a partition's Parquet files (to deduplicate late fills)."""
    ids: set[Any] = set()
    for path in sorted(directory.glob("*.parquet")):
        ids.update(pq.read_table(path, columns=["trade_id"]).column("trade_id").to_pylist())
    return ids


def write_file(directory: Path, name: str, rows: list[Row]) -> int:
    """Write ``rows`` as ``directory/name`` atomically; returns the row count."""
    dataset = rows[0].dataset
    schema = arrow_schema(dataset)
    records = [{**row.fields, "origin": row.origin, "seq": row.seq} for row in rows]
    table = pa.Table.from_pylist(records, schema=schema)
    directory.mkdir(parents=True, exist_ok=True)
    partial = directory / f"{name}.partial"
    pq.write_table(table, partial, compression="zstd")
    with partial.open("rb") as handle:
        os.fsync(handle.fileno())
    os.replace(partial, directory / name)
    return len(rows)


def seal(
    directory: Path,
    *,
    writer_region: str,
    epoch: int,
    new_sources: list[dict[str, Any]],
) -> None:
    """(Re-)seal a partition, merging the source list of an earlier seal of the same hour.

    Error handling: :class:`StorageError` from the storage engine propagates
    (the round fails and is retried; the journal is kept).
    """
    merged: dict[str, dict[str, Any]] = {}
    if (directory / SUCCESS_MARKER).is_file() and (directory / MANIFEST_NAME).is_file():
        try:
            previous = read_manifest(directory).sources or ()
        except StorageError:
            previous = ()
        for entry in previous:
            merged[str(entry.get("source"))] = dict(entry)
    for entry in new_sources:
        held = merged.get(entry["source"])
        if held is None:
            merged[entry["source"]] = dict(entry)
            continue
        held["rows"] = int(held.get("rows", 0)) + int(entry["rows"])
        held["worst_freshness_seconds"] = max(
            float(held.get("worst_freshness_seconds") or 0.0),
            float(entry["worst_freshness_seconds"]),
        )
        held["late_rows"] = int(held.get("late_rows", 0)) + int(entry.get("late_rows", 0))
    sources = sorted(merged.values(), key=lambda e: str(e["source"]))
    worst = max((float(e.get("worst_freshness_seconds") or 0.0) for e in sources), default=0.0)
    seal_partition(
        directory,
        writer_region=writer_region,
        epoch=epoch,
        sources=sources,
        worst_freshness_seconds=worst,
    )
