"""Whole-table and whole-file validation: what the copier and the CLI call.

:func:`validate_table` runs the three checks over an in-memory table;
:func:`validate_partition_file` reads one Parquet file, validates it, writes
the row-level sidecar or quarantines the file, and counts everything in the
contract's metrics. In strict mode the first finding fails the call with
:class:`~cryptorun_daemon.errors.ValidationFailedError` (the copier's step then
fails with reason ``validation``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, cast

import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import _parquet

from cryptorun_daemon.config.model import TIERS, Tier, ValidationConfig
from cryptorun_daemon.data.validate.anomaly import AnomalyParams, Dataset, anomaly_batch
from cryptorun_daemon.data.validate.findings import (
    BatchResult,
    Check,
    ValidationError,
    empty_result,
    merge_results,
)
from cryptorun_daemon.data.validate.quarantine import (
    quarantine_file,
    sidecar_entry,
    write_sidecar,
)
from cryptorun_daemon.data.validate.schema import (
    LATEST,
    fingerprint,
    schema_batch,
    table_schema_errors,
)
from cryptorun_daemon.data.validate.staleness import staleness_batch
from cryptorun_daemon.data.validate.tables import encode_strings
from cryptorun_daemon.errors import ValidationFailedError
from cryptorun_daemon.metrics import Metrics
from cryptorun_daemon.runtime.allocator import decode_pool
from cryptorun_daemon.storage.layout import SPOOL_DIR
from cryptorun_daemon.storage.quarantine_sidecar import forget_file

Status = Literal["clean", "rows_flagged", "file_quarantined"]
# data_consistency_errors_total has a fixed label set; drift is a staleness
# problem there and gets its own label only in validation_errors_total.
CONSISTENCY_LABEL: Final[Mapping[Check, str]] = {
    "schema": "schema",
    "staleness": "staleness",
    "drift": "staleness",
    "anomaly": "anomaly",
    "corrupt": "corrupt",
}


@dataclass(frozen=True)
class TableReport:
    """The verdict on one table: file-level errors, or row-level findings."""

    dataset: Dataset
    schema_ref: str
    num_rows: int
    file_errors: tuple[ValidationError, ...]
    result: BatchResult

    @property
    def clean(self) -> bool:
        return not self.file_errors and self.result.flagged == 0


def validate_table(
    table: pa.Table,
    *,
    dataset: Dataset,
    tier: Tier,
    config: ValidationConfig | None = None,
    anomaly: AnomalyParams | None = None,
    now_ns: int | None = None,
) -> TableReport:
    """Schema, staleness and anomaly checks over ``table``, vectorised.

    A table whose columns do not match the dataset's schema gets only
    ``file_errors`` (its rows cannot be judged); otherwise ``result`` holds the
    row-level findings in the order schema, staleness/drift, anomaly.
    """
    config = config or ValidationConfig()
    schema = LATEST[dataset]
    file_errors = tuple(table_schema_errors(table.schema, schema))
    if file_errors:
        return TableReport(
            dataset, schema.ref, table.num_rows, file_errors, empty_result(table.num_rows)
        )
    params = anomaly or AnomalyParams(config.anomaly)
    table = encode_strings(table)
    result = merge_results(
        table.num_rows,
        [
            schema_batch(table, schema),
            staleness_batch(
                table,
                config.staleness[tier],
                drift_tolerance=config.drift_tolerance,
                now_ns=now_ns,
            ),
            anomaly_batch(table, params, dataset=dataset),
        ],
    )
    return TableReport(dataset, schema.ref, table.num_rows, (), result)


def read_partition_table(path: Path) -> pa.Table:
    """Read a Parquet file with string columns dictionary-encoded.

    Dictionary columns are cheaper to read and let domain checks look at each
    distinct string once. Decoded one column at a time, on the calling thread,
    into the decode pool (:func:`~cryptorun_daemon.runtime.allocator.decode_pool`):

    * a whole-file read holds every column's compressed and decompressed
      pages and growing builders at once (a 6 MB, 100k-row hourly table
      peaked at 20.6 MB in Arrow's pool); column by column the peak is the
      table plus one column's working set (8.4 MB), and the copier runs
      ``max_validations`` of these at a time;
    * without threads (``ParquetFile.read`` does the same), not ``read_table``
      (which hands the work to Arrow's dataset scanner and its thread pools):
      callers already validate several files at once;
    * the table's buffers come from the decode pool, not Arrow's default
      (mimalloc, which kept a validation's segments resident unless released,
      and released it faulted every page in again for the next file): jemalloc
      reuses its pages from one file to the next and returns them on its own
      once validation pauses.

    The table is the same as a whole-file read's (columns, types, schema
    metadata). Error handling: unreadable or corrupt files raise ``OSError``
    or ``pyarrow.ArrowException``.
    """
    with pq.ParquetFile(path) as probe:
        metadata = probe.metadata
        schema = probe.schema_arrow
    strings = [f.name for f in schema if pa.types.is_string(f.type)]
    if len(set(schema.names)) != len(schema.names) or metadata.num_columns != len(schema):
        # Duplicate names, or nested columns (a struct spans several leaf columns, and
        # the reader picks leaves): read whole; the schema check will refuse the file.
        with pq.ParquetFile(path, metadata=metadata, read_dictionary=strings or None) as whole:
            return whole.read(use_threads=False)
    # ParquetFile has no memory_pool argument; the reader it wraps does.
    reader = _parquet.ParquetReader(memory_pool=decode_pool())
    try:
        # Not pre-buffered: pre-buffering reads the column chunks into Arrow's
        # default pool; page by page they come from the page cache.
        reader.open(str(path), metadata=metadata, read_dictionary=strings or None, pre_buffer=False)
        schema = reader.schema_arrow
        columns = [
            reader.read_all(column_indices=[index], use_threads=False).column(0)
            for index in range(len(schema.names))
        ]
    finally:
        reader.close()
    return pa.Table.from_arrays(columns, schema=schema)


@dataclass(frozen=True)
class FileVerdict:
    """What happened to one file. ``committable`` is false once it was quarantined."""

    path: Path
    status: Status
    dataset: Dataset
    schema_ref: str
    fingerprint: str
    rows: int
    flagged_rows: int
    counts: Mapping[Check, int] = field(default_factory=dict)
    file_errors: tuple[ValidationError, ...] = ()
    sidecar: Path | None = None
    quarantined_to: Path | None = None

    @property
    def committable(self) -> bool:
        return self.status != "file_quarantined"

    @property
    def ok(self) -> bool:
        """The copier's step-validator protocol: false when the file was quarantined."""
        return self.committable

    @property
    def detail(self) -> str:
        """One line for logs and step failure messages."""
        if self.file_errors:
            first = self.file_errors[0]
            return (
                f"{first.check} failure ({first.reason} {first.field}); "
                f"quarantined at {self.quarantined_to}"
            )
        if self.flagged_rows:
            counts = ", ".join(f"{check}={n}" for check, n in sorted(self.counts.items()))
            return f"{self.flagged_rows} of {self.rows} rows flagged ({counts}); see {self.sidecar}"
        return "clean"

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "status": self.status,
            "dataset": self.dataset,
            "schema": self.schema_ref,
            "fingerprint": self.fingerprint,
            "rows": self.rows,
            "flagged_rows": self.flagged_rows,
            "counts": dict(self.counts),
            "file_errors": [e.to_dict() for e in self.file_errors],
            "sidecar": str(self.sidecar) if self.sidecar else None,
            "quarantined_to": str(self.quarantined_to) if self.quarantined_to else None,
        }


def _count(metrics: Metrics, check: Check, tier: str, region: str, amount: int) -> None:
    if amount <= 0:
        return
    metrics.data_consistency_errors_total.labels(check=CONSISTENCY_LABEL[check]).inc(amount)
    metrics.validation_errors_total.labels(check=check, tier=tier, region=region).inc(amount)


def _first_row_finding(result: BatchResult) -> tuple[int, ValidationError]:
    """The finding on the lowest flagged row (per-record order breaks ties).

    Only called when something was flagged, so every group has an example.
    """
    return min((group.examples[0] for group in result.groups), key=lambda item: item[0])


def validate_partition_file(
    path: Path,
    *,
    dataset: Dataset,
    tier: Tier,
    region: str,
    config: ValidationConfig,
    metrics: Metrics,
    storage_root: Path,
    strict: bool | None = None,
    relative_to: Path | None = None,
    source: str | None = None,
    anomaly: AnomalyParams | None = None,
) -> FileVerdict:
    """Validate one Parquet file in place; sidecar, quarantine and metrics included.

    Behaviour:

    * unreadable file → check ``corrupt``; wrong columns → check ``schema``:
      both are file-level: the file moves to
      ``storage_root/_quarantine/{tier}/{region}/<path relative to
      relative_to (default storage_root/tier)>`` with ``.error.json`` beside it,
      ``quarantine_total{kind="file"}`` +1, and ``committable`` is false;
    * row-level findings → ``_quarantine.json`` beside the file (bytes kept),
      each finding counted in ``data_consistency_errors_total{check}`` (drift
      as ``staleness``) and ``validation_errors_total{check,tier,region}``,
      and flagged rows in ``quarantine_total{kind="row"}``;
    * ``strict`` (default ``config.strict``): the first finding is counted
      (and a failing file still quarantined, never deleted), then
      ``ValidationFailedError`` is raised.

    Error handling: ``StorageError`` when a quarantine move fails.
    """
    strict = config.strict if strict is None else strict
    schema = LATEST[dataset]
    fp = fingerprint(schema)

    def file_level(check: Check, errors: tuple[ValidationError, ...], rows: int) -> FileVerdict:
        _count(metrics, check, tier, region, 1)
        moved = quarantine_file(
            path,
            storage_root=storage_root,
            tier=tier,
            region=region,
            errors=errors,
            relative_to=relative_to,
            source=source,
        )
        metrics.quarantine_total.labels(tier=tier, region=region, kind="file").inc()
        if strict:
            raise ValidationFailedError(
                f"{path}: {check} failure ({errors[0].reason} {errors[0].field}); "
                f"file quarantined at {moved}"
            )
        return FileVerdict(
            moved,
            "file_quarantined",
            dataset,
            schema.ref,
            fp,
            rows,
            rows,
            {check: 1},
            errors,
            None,
            moved,
        )

    try:
        table = read_partition_table(path)
    except (OSError, pa.ArrowException) as exc:
        error = ValidationError(
            "corrupt", "", str(exc)[:500], "a readable Parquet file", "unreadable"
        )
        return file_level("corrupt", (error,), 0)
    report = validate_table(table, dataset=dataset, tier=tier, config=config, anomaly=anomaly)
    if report.file_errors:
        return file_level("schema", report.file_errors, report.num_rows)
    result = report.result
    if result.flagged == 0:
        # Bytes rewritten under the same name must not keep the old bytes' findings.
        forget_file(path)
        return FileVerdict(path, "clean", dataset, schema.ref, fp, report.num_rows, 0)
    if strict:
        row, error = _first_row_finding(result)
        _count(metrics, error.check, tier, region, 1)
        raise ValidationFailedError(
            f"{path}: row {row}: {error.check} {error.field} {error.reason} "
            f"(value {error.to_dict()['value']!r}, expected {error.expected})"
        )
    counts = result.counts()
    for check, amount in counts.items():
        _count(metrics, check, tier, region, amount)
    metrics.quarantine_total.labels(tier=tier, region=region, kind="row").inc(result.flagged)
    sidecar = write_sidecar(
        path,
        sidecar_entry(result, schema_ref=schema.ref, fingerprint=fp, tier=tier, region=region),
    )
    return FileVerdict(
        path,
        "rows_flagged",
        dataset,
        schema.ref,
        fp,
        report.num_rows,
        result.flagged,
        counts,
        (),
        sidecar,
        None,
    )


def partition_validator(
    *,
    region: str,
    config: ValidationConfig,
    metrics: Metrics,
    storage_root: Path,
    strict: bool | None = None,
) -> Callable[[Path, str, str], FileVerdict]:
    """A step validator ``(path, dataset, tier) -> FileVerdict`` bound to one daemon.

    Fits the copier's validator protocol (``verdict.ok``, ``verdict.detail``).
    A file spooled by a bucket → bucket step (``storage_root/SPOOL_DIR/{tier}/…``)
    is quarantined under its partition path exactly like a file of
    ``storage_root/{tier}``. Error handling: in strict mode it raises
    ``ValidationFailedError``.
    """
    spool = storage_root / SPOOL_DIR

    def validate_partition(path: Path, dataset: str, tier: str) -> FileVerdict:
        if dataset not in ("trade", "book") or tier not in TIERS:
            raise ValueError(f"unknown dataset {dataset!r} or tier {tier!r}")
        spooled = spool / tier in path.parents
        return validate_partition_file(
            path,
            dataset=cast(Dataset, dataset),
            tier=tier,
            region=region,
            config=config,
            metrics=metrics,
            storage_root=storage_root,
            strict=strict,
            relative_to=spool / tier if spooled else None,
        )

    return validate_partition
