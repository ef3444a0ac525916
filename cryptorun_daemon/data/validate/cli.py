"""``cryptorun validate PATH...``: offline inspection of partitions and Parquet files.

Reads each file, runs the same checks the copier runs, and prints a per-check
summary plus the first offending rows. It never moves, rewrites or annotates
anything — quarantine happens only in the daemon.

Exit codes: 0 clean, 1 findings, 2 a path could not be read or the tier is
unknown (the message says which).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TextIO, cast

import pyarrow as pa

from cryptorun_daemon.config.model import TIERS, Tier, ValidationConfig
from cryptorun_daemon.data.validate.anomaly import Dataset
from cryptorun_daemon.data.validate.batch import TableReport, read_partition_table, validate_table
from cryptorun_daemon.data.validate.findings import CHECKS, json_safe
from cryptorun_daemon.storage.layout import QUARANTINE_DIR

MAX_ROWS_SHOWN: Final = 10
OFFLINE_NOTE: Final = "offline inspection: nothing was moved, rewritten or quarantined"


@dataclass
class _FileOutcome:
    path: Path
    dataset: Dataset | None = None
    rows: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    offending: list[dict[str, Any]] = field(default_factory=list)
    file_errors: list[dict[str, Any]] = field(default_factory=list)

    @property
    def status(self) -> str:
        if self.file_errors:
            return "file_failure"
        return "findings" if self.offending else "clean"

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "dataset": self.dataset,
            "rows": self.rows,
            "status": self.status,
            "counts": self.counts,
            "file_errors": self.file_errors,
            "first_offending_rows": self.offending,
        }


def _parquet_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(
        p
        for p in path.rglob("*.parquet")
        if QUARANTINE_DIR not in p.relative_to(path).parts and p.is_file()
    )


def _dataset_of(path: Path, table: pa.Table) -> Dataset:
    """The dataset named in the partition path, else the one whose columns fit."""
    for part in reversed(path.parts):
        if part in ("trade", "book"):
            return cast(Dataset, part)
    return "book" if "bids_px" in table.column_names else "trade"


def _inspect(path: Path, tier: Tier, config: ValidationConfig) -> _FileOutcome:
    outcome = _FileOutcome(path)
    try:
        table = read_partition_table(path)
    except (OSError, pa.ArrowException) as exc:
        outcome.counts = {"corrupt": 1}
        outcome.file_errors = [
            {
                "check": "corrupt",
                "field": "",
                "reason": "unreadable",
                "value": str(exc)[:300],
                "expected": "a readable Parquet file",
            }
        ]
        return outcome
    outcome.dataset = _dataset_of(path, table)
    report: TableReport = validate_table(table, dataset=outcome.dataset, tier=tier, config=config)
    outcome.rows = report.num_rows
    if report.file_errors:
        outcome.counts = {"schema": 1}
        outcome.file_errors = [e.to_dict() for e in report.file_errors]
        return outcome
    outcome.counts = {str(check): n for check, n in report.result.counts().items()}
    examples = sorted(
        ((row, error) for group in report.result.groups for row, error in group.examples),
        key=lambda item: item[0],
    )
    outcome.offending = [{"row": row, **error.to_dict()} for row, error in examples]
    outcome.offending = outcome.offending[:MAX_ROWS_SHOWN]
    return outcome


def _print_human(
    out: TextIO, outcomes: list[_FileOutcome], totals: dict[str, int], problems: list[str]
) -> None:
    print(OFFLINE_NOTE, file=out)
    for problem in problems:
        print(f"error: {problem}", file=out)
    for outcome in outcomes:
        print(
            f"\n{outcome.path}  [{outcome.dataset or '?'}]  rows={outcome.rows}  {outcome.status}",
            file=out,
        )
        for error in outcome.file_errors:
            print(
                f"  FILE {error['check']:<9} {error['field'] or '-':<10} {error['reason']:<14} "
                f"{error['value']!s:.80}  (expected {error['expected']})",
                file=out,
            )
        if outcome.offending:
            print(f"  {'row':>9}  {'check':<9} {'field':<10} {'reason':<14} value", file=out)
            for item in outcome.offending:
                print(
                    f"  {item['row']:>9}  {item['check']:<9} {item['field']:<10} "
                    f"{item['reason']:<14} {item['value']!s:.60}",
                    file=out,
                )
    print("\nsummary (findings per check):", file=out)
    for check in CHECKS:
        print(f"  {check:<10} {totals.get(check, 0)}", file=out)
    print(
        f"files: {len(outcomes)}, with findings: {sum(1 for o in outcomes if o.status != 'clean')}",
        file=out,
    )


def run_validate(
    paths: Sequence[str],
    *,
    tier: str,
    as_json: bool,
    out: TextIO,
    config: ValidationConfig | None = None,
) -> int:
    """Validate partition folders and Parquet files offline; print and return the exit code.

    Behaviour: every ``*.parquet`` under each folder (``_quarantine`` folders
    skipped) is checked with the staleness threshold of ``tier``; output is a
    human table, or one JSON document with ``as_json``. Exit 0 when clean, 1
    when anything was found (including corrupt files), 2 when a path does not
    exist, holds no Parquet file, or ``tier`` is unknown.
    """
    config = config or ValidationConfig()
    problems: list[str] = []
    outcomes: list[_FileOutcome] = []
    if tier not in TIERS:
        problems.append(f"unknown tier {tier!r}; expected one of {', '.join(TIERS)}")
    else:
        for raw in paths:
            path = Path(raw)
            if not path.exists():
                problems.append(f"{raw}: no such file or directory")
                continue
            try:
                files = _parquet_files(path)
            except OSError as exc:
                problems.append(f"{raw}: cannot read: {exc}")
                continue
            if not files:
                problems.append(f"{raw}: no Parquet files found")
            outcomes += [_inspect(f, tier, config) for f in files]
    totals: dict[str, int] = {}
    for outcome in outcomes:
        for check, amount in outcome.counts.items():
            totals[check] = totals.get(check, 0) + amount
    code = 2 if problems else (1 if any(o.status != "clean" for o in outcomes) else 0)
    if as_json:
        document = {
            "offline": True,
            "note": OFFLINE_NOTE,
            "tier": tier,
            "exit_code": code,
            "errors": problems,
            "summary": {check: totals.get(check, 0) for check in CHECKS},
            "files": [o.to_dict() for o in outcomes],
        }
        print(json.dumps(json_safe(document), sort_keys=True, allow_nan=False), file=out)
    else:
        _print_human(out, outcomes, totals, problems)
    return code
