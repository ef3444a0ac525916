"""Validation of market data: schema, staleness/drift, anomalies, and quarantine.

Per-record checks (``ValidateFn``) serve the hot tier; batch checks over
``pyarrow.Table`` serve partitions; :func:`validate_partition_file` is the
copier's single entry point and :func:`run_validate` the CLI's.
"""

from cryptorun_daemon.data.validate.anomaly import (
    AnomalyChecker,
    AnomalyParams,
    anomaly_batch,
    anomaly_check,
)
from cryptorun_daemon.data.validate.batch import (
    FileVerdict,
    TableReport,
    partition_validator,
    read_partition_table,
    validate_partition_file,
    validate_table,
)
from cryptorun_daemon.data.validate.cli import run_validate
from cryptorun_daemon.data.validate.findings import (
    BatchResult,
    ErrorGroup,
    Record,
    ValidateFn,
    ValidationError,
)
from cryptorun_daemon.data.validate.quarantine import (
    quarantine_counts,
    quarantined_rows,
    release_file,
)
from cryptorun_daemon.data.validate.schema import (
    BOOK_V1,
    REGISTRY,
    TRADE_V1,
    Schema,
    arrow_schema,
    fingerprint,
    get_schema,
    schema_batch,
    schema_check,
    table_schema_errors,
)
from cryptorun_daemon.data.validate.staleness import staleness_batch, staleness_check
from cryptorun_daemon.data.validate.tables import records_from_table
from cryptorun_daemon.storage.quarantine_sidecar import SIDECAR_NAME

__all__ = [
    "BOOK_V1",
    "REGISTRY",
    "SIDECAR_NAME",
    "TRADE_V1",
    "AnomalyChecker",
    "AnomalyParams",
    "BatchResult",
    "ErrorGroup",
    "FileVerdict",
    "Record",
    "Schema",
    "TableReport",
    "ValidateFn",
    "ValidationError",
    "anomaly_batch",
    "anomaly_check",
    "arrow_schema",
    "fingerprint",
    "get_schema",
    "partition_validator",
    "quarantine_counts",
    "quarantined_rows",
    "read_partition_table",
    "records_from_table",
    "release_file",
    "run_validate",
    "schema_batch",
    "schema_check",
    "staleness_batch",
    "staleness_check",
    "table_schema_errors",
    "validate_partition_file",
    "validate_table",
]
