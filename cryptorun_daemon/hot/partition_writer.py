"""Turn one window's hot records into Parquet files in the warm partition layout, sealed.

Selection rules (issue 5, "source authority"): trades come from every source
and are deduplicated by ``(venue, symbol, trade_id)``, keeping the copy from
the source that was authoritative when it was ingested (else the best-ranked
source); books come only from the source that was authoritative at the
record's ingest time. Each partition's manifest lists the sources it used and
the worst freshness among them (the largest gap between consecutive records of
a used source: "worst-feed-wins"), derived from the per-file summaries its data
files carry, so a repeated seal never counts a row twice.

Writes are crash-safe and idempotent (the invariants are in ``hot/sealer.py``).

Blocking (Parquet I/O and hashing): call from a worker thread.
"""

from __future__ import annotations

import filecmp
import itertools
import json
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from cryptorun_daemon.data.validate.schema import arrow_schema
from cryptorun_daemon.errors import StorageError
from cryptorun_daemon.runtime.failpoints import failpoint
from cryptorun_daemon.storage.atomic import commit_file, fsync_dir, make_durable_dirs
from cryptorun_daemon.storage.layout import (
    PARTIAL_SUFFIX,
    SUCCESS_MARKER,
    hourly_key,
)
from cryptorun_daemon.storage.manifest import data_file_names, read_manifest
from cryptorun_daemon.storage.seal import seal_partition
from cryptorun_daemon.storage.superseded import keep_superseded_manifest

SourceAt = Callable[[str, str, int], str | None]  # venue, symbol, ingest_ns -> source
Rank = Callable[[str], int]
SOURCES_KEY = "cryptorun.sources"  # Parquet metadata: the file's per-source summary
LATE_FILL_PREFIX = "late-fill-"


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


def existing_trade_ids(directory: Path, *, exclude: Collection[str] = ()) -> set[Any]:
    """Trade ids already in a partition's Parquet files (to deduplicate late fills).

    ``exclude`` names files to ignore: a late fill that is being redone after a
    crash must not find its own half-committed rows and drop them.
    """
    ids: set[Any] = set()
    for path in sorted(directory.glob("*.parquet")):
        if path.name in exclude:
            continue
        ids.update(pq.read_table(path, columns=["trade_id"]).column("trade_id").to_pylist())
    return ids


def write_file(directory: Path, name: str, rows: list[Row]) -> int:
    """Put ``rows`` in ``directory/name`` crash-safely; returns the row count.

    The per-source summary of the rows goes into the file's Parquet metadata
    (``cryptorun.sources``, per file: a table read across several files shows
    one file's), so a seal derives the manifest's source list from the files
    alone (see :func:`seal`). The bytes are a pure function of the
    rows, so writing the same rows again is a no-op: the file is first written
    as ``.name.partial``; when ``name`` already holds the same bytes the partial
    is dropped. Otherwise, if the partition is sealed, ``_SUCCESS`` is unlinked
    first (fail point ``reseal.after_unseal``) so that no reader ever pairs the
    old seal with the new data, and then the file replaces ``name`` (fsync of
    file and directory). The caller re-seals.
    """
    dataset = rows[0].dataset
    schema = arrow_schema(dataset).with_metadata(
        {SOURCES_KEY: json.dumps(source_summary(rows), sort_keys=True).encode()}
    )
    records = [{**row.fields, "origin": row.origin, "seq": row.seq} for row in rows]
    table = pa.Table.from_pylist(records, schema=schema)
    if not directory.is_dir():
        make_durable_dirs(directory)
    final = directory / name
    # Hidden, so a crash that leaves it behind never blocks a seal (data_file_names
    # refuses unknown visible names); the redo overwrites it.
    partial = directory / f".{name}{PARTIAL_SUFFIX}"
    pq.write_table(table, partial, compression="zstd")
    if final.is_file() and filecmp.cmp(partial, final, shallow=False):
        partial.unlink()
        return len(rows)
    success = directory / SUCCESS_MARKER
    if success.is_file():
        _keep_sealed_version(directory)
        success.unlink()
        fsync_dir(directory)
        failpoint("reseal.after_unseal")
    commit_file(partial, final)
    return len(rows)


def _keep_sealed_version(directory: Path) -> None:
    """Keep the manifest of the sealed version about to change under ``_superseded/``.

    The re-seal that follows replaces the manifest; a research read "as of" a
    time before it must still find what was sealed then
    (:func:`~cryptorun_daemon.storage.superseded.keep_superseded_manifest`).
    A crash after this and before the unlink keeps it twice on the redo,
    which reads the same.
    """
    try:
        held = read_manifest(directory)
    except StorageError:
        return  # nothing readable was sealed: nothing to keep
    root = directory.parents[len(held.key.relpath.split("/"))]
    keep_superseded_manifest(root, held)


def _file_sources(path: Path) -> list[dict[str, Any]]:
    """The per-source summary a data file carries (written by :func:`write_file`).

    A file without it (written by an older version or by hand) is summarised
    from its ``origin`` column, with unknown (zero) freshness.
    """
    schema = pq.read_schema(path)
    raw = (schema.metadata or {}).get(SOURCES_KEY.encode())
    if raw is not None:
        try:
            value = json.loads(raw)
        except ValueError:
            value = None
        if isinstance(value, list):
            return [dict(entry) for entry in value if isinstance(entry, dict)]
    if "origin" not in schema.names:
        return []
    counts: dict[str, int] = defaultdict(int)
    for origin in pq.read_table(path, columns=["origin"]).column("origin").to_pylist():
        counts[str(origin)] += 1
    return [
        {"source": source, "rows": n, "worst_freshness_seconds": 0.0}
        for source, n in sorted(counts.items())
    ]


def partition_sources(directory: Path) -> list[dict[str, Any]]:
    """The manifest's source list, derived from the partition's data files only.

    Rows of ``late-fill-*`` files count as ``late_rows``, the others as
    ``rows``; a source's freshness is the worst over the files. Being a pure
    function of the files, a seal repeated after a crash yields the same list
    (a merge with the previous manifest would count the redone rows twice).
    """
    merged: dict[str, dict[str, Any]] = {}
    for name in data_file_names(directory):
        late = name.startswith(LATE_FILL_PREFIX)
        for entry in _file_sources(directory / name):
            source = str(entry.get("source"))
            held = merged.setdefault(
                source,
                {"source": source, "rows": 0, "late_rows": 0, "worst_freshness_seconds": 0.0},
            )
            held["late_rows" if late else "rows"] += int(entry.get("rows") or 0)
            held["worst_freshness_seconds"] = max(
                float(held["worst_freshness_seconds"]),
                float(entry.get("worst_freshness_seconds") or 0.0),
            )
    return [merged[source] for source in sorted(merged)]


def seal(directory: Path, *, writer_region: str, epoch: int) -> None:
    """(Re-)seal a partition; its source list comes from its files (:func:`partition_sources`).

    Idempotent: sealing unchanged files again leaves the seal as it is.

    Error handling: :class:`StorageError` from the storage engine propagates
    (the round fails and is retried; the journal is kept).
    """
    sources = partition_sources(directory)
    worst = max((float(e["worst_freshness_seconds"]) for e in sources), default=0.0)
    seal_partition(
        directory,
        writer_region=writer_region,
        epoch=epoch,
        sources=sources,
        worst_freshness_seconds=worst,
    )
