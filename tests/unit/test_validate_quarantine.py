"""validate_partition_file: sidecars, file quarantine, strict mode, metrics, counts, release."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cryptorun_daemon.config.model import ValidationConfig
from cryptorun_daemon.data.validate import (
    SIDECAR_NAME,
    arrow_schema,
    fingerprint,
    partition_validator,
    quarantine_counts,
    quarantined_rows,
    release_file,
    validate_partition_file,
)
from cryptorun_daemon.errors import StorageError, ValidationFailedError
from cryptorun_daemon.metrics import Metrics

T0 = 1_756_684_800_000_000_000
S = 1_000_000_000
PARTITION = "trade/venue=kraken/symbol=BTC-USD/date=2025-09-01/hour=00"


def rows(n: int = 200) -> list[dict[str, Any]]:
    rng = np.random.default_rng(1)
    prices = np.round(60_000 + rng.normal(0, 3, n), 1)
    return [
        {
            "ts": T0 + i * S,
            "venue": "kraken",
            "symbol": "BTC/USD",
            "side": "buy",
            "price": float(prices[i]),
            "qty": 1.0,
            "trade_id": i,
            "ingest_ts": T0 + i * S + 1000,
            "origin": "eu-central",
            "seq": i,
        }
        for i in range(n)
    ]


def write(root: Path, data: list[dict[str, Any]], schema: pa.Schema | None = None) -> Path:
    folder = root / "warm" / PARTITION
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "part-000.parquet"
    pq.write_table(pa.Table.from_pylist(data, schema=schema or arrow_schema("trade")), path)
    return path


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def run(path: Path, root: Path, metrics: Metrics, **kwargs: Any) -> Any:
    return validate_partition_file(
        path,
        dataset="trade",
        tier="warm",
        region="us-east",
        config=ValidationConfig(),
        metrics=metrics,
        storage_root=root,
        **kwargs,
    )


def test_clean_file_is_left_alone(tmp_path: Path) -> None:
    """A clean file stays put, gets no sidecar and counts nothing."""
    path = write(tmp_path, rows())
    metrics = Metrics()
    verdict = run(path, tmp_path, metrics)
    assert verdict.status == "clean"
    assert verdict.committable
    assert verdict.fingerprint == fingerprint("trade")
    assert not (path.parent / SIDECAR_NAME).exists()
    assert (
        sample(metrics, "cryptorun_quarantine_total", tier="warm", region="us-east", kind="row")
        == 0
    )


def test_row_findings_write_a_sidecar_and_keep_the_bytes(tmp_path: Path) -> None:
    """Bad rows are listed in _quarantine.json (row, check, reason); the file is untouched."""
    data = rows()
    data[3]["price"] = math.nan
    data[10]["ingest_ts"] = data[10]["ts"] + 61 * S
    data[11]["ts"] = data[11]["ingest_ts"] + 3 * S
    data[12]["ts"] = data[12]["ingest_ts"] + 3 * S
    data[150]["price"] *= 1.05
    path = write(tmp_path, data)
    before = path.read_bytes()
    metrics = Metrics()
    verdict = run(path, tmp_path, metrics)
    assert verdict.status == "rows_flagged"
    assert verdict.committable
    assert path.read_bytes() == before
    sidecar = json.loads((path.parent / SIDECAR_NAME).read_text())
    entry = sidecar["files"]["part-000.parquet"]
    assert entry["flagged_rows"] == 5
    assert entry["rows"] == 200
    assert entry["schema"] == "trade@1"
    assert entry["region"] == "us-east"
    got = {(f["check"], f["field"], f["reason"]): f["rows"] for f in entry["findings"]}
    assert got == {
        ("schema", "price", "not_finite"): [[3, 4]],
        ("staleness", "ingest_ts", "stale"): [[10, 11]],
        ("drift", "ts", "clock_drift"): [[11, 13]],
        ("anomaly", "price", "spike"): [[150, 151]],
    }
    assert entry["findings"][0]["examples"][0]["value"] == "NaN"
    assert quarantined_rows(path).tolist() == [3, 10, 11, 12, 150]
    # Exact labels: drift counts as staleness in the fixed consistency family.
    assert sample(metrics, "cryptorun_data_consistency_errors_total", check="schema") == 1
    assert sample(metrics, "cryptorun_data_consistency_errors_total", check="staleness") == 3
    assert sample(metrics, "cryptorun_data_consistency_errors_total", check="anomaly") == 1
    labels = {"tier": "warm", "region": "us-east"}
    assert sample(metrics, "cryptorun_validation_errors_total", check="drift", **labels) == 2
    assert sample(metrics, "cryptorun_validation_errors_total", check="staleness", **labels) == 1
    assert sample(metrics, "cryptorun_validation_errors_total", check="schema", **labels) == 1
    assert sample(metrics, "cryptorun_validation_errors_total", check="anomaly", **labels) == 1
    assert sample(metrics, "cryptorun_quarantine_total", kind="row", **labels) == 5
    assert sample(metrics, "cryptorun_quarantine_total", kind="file", **labels) == 0


def test_wrong_schema_moves_the_file_with_an_error_record(tmp_path: Path) -> None:
    """A file missing a column is moved (not deleted) under _quarantine/{tier}/{region}/."""
    data = [{k: v for k, v in r.items() if k != "qty"} for r in rows(5)]
    schema = pa.schema([f for f in arrow_schema("trade") if f.name != "qty"])
    path = write(tmp_path, data, schema)
    content = path.read_bytes()
    metrics = Metrics()
    verdict = run(path, tmp_path, metrics, source="eu-central")
    assert verdict.status == "file_quarantined"
    assert not verdict.committable
    target = tmp_path / "_quarantine" / "warm" / "us-east" / PARTITION / "part-000.parquet"
    assert verdict.quarantined_to == target
    assert not path.exists()
    assert target.read_bytes() == content
    record = json.loads(target.with_name("part-000.parquet.error.json").read_text())
    assert record["errors"][0]["field"] == "qty"
    assert record["errors"][0]["reason"] == "missing"
    assert record["source"] == "eu-central"
    assert record["original_path"] == str(path)
    assert (
        sample(metrics, "cryptorun_quarantine_total", tier="warm", region="us-east", kind="file")
        == 1
    )
    assert sample(metrics, "cryptorun_data_consistency_errors_total", check="schema") == 1
    assert (
        sample(
            metrics,
            "cryptorun_validation_errors_total",
            check="schema",
            tier="warm",
            region="us-east",
        )
        == 1
    )


def test_corrupt_file_is_quarantined_as_corrupt(tmp_path: Path) -> None:
    """Bytes that are not Parquet are a file-level ``corrupt`` failure, kept in quarantine."""
    path = write(tmp_path, rows(3))
    path.write_bytes(b"PAR1 definitely not parquet")
    metrics = Metrics()
    verdict = run(path, tmp_path, metrics)
    assert verdict.status == "file_quarantined"
    assert verdict.file_errors[0].check == "corrupt"
    assert verdict.quarantined_to is not None
    assert verdict.quarantined_to.exists()
    assert sample(metrics, "cryptorun_data_consistency_errors_total", check="corrupt") == 1


def test_second_quarantine_of_same_path_does_not_overwrite(tmp_path: Path) -> None:
    """Quarantining the same partition path twice keeps both files (suffix .1)."""
    metrics = Metrics()
    for _ in range(2):
        path = write(tmp_path, rows(3))
        path.write_bytes(b"junk")
        run(path, tmp_path, metrics)
    folder = tmp_path / "_quarantine" / "warm" / "us-east" / PARTITION
    assert sorted(p.name for p in folder.iterdir() if p.suffix != ".json") == [
        "part-000.parquet",
        "part-000.parquet.1",
    ]


def test_strict_mode_raises_at_first_violation(tmp_path: Path) -> None:
    """strict=True raises ValidationFailedError naming the first bad row; one finding counted."""
    data = rows()
    data[7]["qty"] = -1.0
    data[9]["price"] = -1.0
    path = write(tmp_path, data)
    metrics = Metrics()
    with pytest.raises(ValidationFailedError, match="row 7: schema qty out_of_domain"):
        run(path, tmp_path, metrics, strict=True)
    assert sample(metrics, "cryptorun_data_consistency_errors_total", check="schema") == 1
    assert not (path.parent / SIDECAR_NAME).exists()


def test_strict_mode_file_failure_still_keeps_the_file(tmp_path: Path) -> None:
    """A strict file-level failure raises after moving the file to quarantine."""
    path = write(tmp_path, rows(3))
    path.write_bytes(b"junk")
    with pytest.raises(ValidationFailedError, match="quarantined"):
        run(path, tmp_path, Metrics(), strict=True)
    assert list((tmp_path / "_quarantine").rglob("part-000.parquet"))


def test_counts_and_release(tmp_path: Path) -> None:
    """Status counts quarantined files and flagged rows; release moves a file back."""
    metrics = Metrics()
    bad = write(tmp_path, rows(3))
    bad.write_bytes(b"junk")
    moved = run(bad, tmp_path, metrics).quarantined_to
    data = rows()
    data[0]["side"] = "hold"
    run(write(tmp_path, data), tmp_path, metrics)
    counts = quarantine_counts(tmp_path)
    assert counts["warm"] == {"files": 1, "rows": 1}
    assert counts["hot"] == {"files": 0, "rows": 0}
    assert quarantine_counts(tmp_path, region="eu-central")["warm"] == {"files": 0, "rows": 0}
    with pytest.raises(StorageError, match="overwrite"):
        release_file(moved, storage_root=tmp_path)  # the good file now sits at that path
    bad.rename(bad.with_name("part-001.parquet"))
    released = release_file(moved, storage_root=tmp_path)
    assert released == bad
    assert released.read_bytes() == b"junk"
    assert moved.with_name("part-000.parquet.released.json").exists()
    assert quarantine_counts(tmp_path)["warm"]["files"] == 0


def test_partition_validator_fits_the_copier_protocol(tmp_path: Path) -> None:
    """The bound validator takes (path, dataset, tier) and answers ok/detail."""
    validator = partition_validator(
        region="us-east", config=ValidationConfig(), metrics=Metrics(), storage_root=tmp_path
    )
    data = rows()
    data[5]["price"] = -1.0
    verdict = validator(write(tmp_path, data), "trade", "warm")
    assert verdict.ok
    assert "1 of 200 rows flagged (schema=1)" in verdict.detail
    bad = write(tmp_path, rows(3))
    bad.write_bytes(b"junk")
    verdict = validator(bad, "trade", "warm")
    assert not verdict.ok
    assert verdict.detail.startswith("corrupt failure")
    with pytest.raises(ValueError, match="unknown dataset"):
        validator(bad, "candle", "warm")
