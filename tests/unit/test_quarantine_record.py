"""The quarantine area has one record writer: every kind of record has one shape.

Real files in a temp dir; no mocks.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cryptorun_daemon.data.validate.findings import ValidationError
from cryptorun_daemon.data.validate.quarantine import (
    quarantine_counts,
    quarantine_file,
    release_file,
)
from cryptorun_daemon.storage.manifest import FileEntry, Manifest
from cryptorun_daemon.storage.quarantine_record import (
    REQUIRED_KEYS,
    error_record_path,
    write_quarantine_record,
)
from cryptorun_daemon.storage.write_fence import quarantine_fenced_manifest

PARTITION = "trade/venue=kraken/symbol=BTC-USD/date=2025-09-01/hour=03"
HASH = "xxh3-128:" + "0" * 32


def fenced_manifest() -> Manifest:
    return Manifest(
        tier="warm",
        partition=PARTITION,
        files=(FileEntry(name="part-0.parquet", bytes=3, hash=HASH),),
        schema_fingerprint=None,
        writer_region="eu-central",
        epoch=1,
        sealed_at=datetime(2025, 9, 1, 11, tzinfo=UTC),
    )


def quarantined_data_file(root: Path) -> Path:
    data = root / "warm" / PARTITION / "part-0.parquet"
    data.parent.mkdir(parents=True)
    data.write_bytes(b"bad")
    finding = ValidationError(
        check="corrupt", field="", value="3 bytes", expected="4 bytes", reason="hash_mismatch"
    )
    return quarantine_file(
        data,
        storage_root=root,
        tier="warm",
        region="us-east",
        errors=[finding],
        source="eu-central",
    )


def test_file_and_fenced_records_share_one_shape_and_are_counted(tmp_path: Path) -> None:
    """A quarantined data file and a refused (fenced) manifest each get an ``.error.json``
    beside them with the common keys, written as sorted, indented JSON with a trailing
    newline, in the same ``_quarantine/{tier}/{region}/{partition}/`` folder; the status
    counts see both."""
    moved = quarantined_data_file(tmp_path)
    kept = quarantine_fenced_manifest(
        tmp_path,
        region="us-east",
        manifest=fenced_manifest(),
        source="eu-central",
        reason="sealed after epoch 1 ended",
    )
    assert kept is not None
    folder = tmp_path / "_quarantine" / "warm" / "us-east" / PARTITION
    assert moved.parent == folder
    assert kept.parent == folder
    kinds = {}
    for item in (moved, kept):
        text = error_record_path(item).read_text()
        record = json.loads(text)
        assert set(REQUIRED_KEYS) <= set(record)
        assert text == json.dumps(record, indent=2, sort_keys=True) + "\n"
        kinds[record["kind"]] = record
    assert set(kinds) == {"file", "fenced"}
    assert {r["region"] for r in kinds.values()} == {"us-east"}
    assert {r["source"] for r in kinds.values()} == {"eu-central"}
    assert quarantine_counts(tmp_path, region="us-east")["warm"]["files"] == 2


def test_record_without_the_common_keys_is_refused(tmp_path: Path) -> None:
    """The writer refuses a record lacking a common key or naming an unknown kind, and
    writes nothing: every record on disk can be read the same way."""
    target = tmp_path / "x.parquet"
    with pytest.raises(ValueError, match="lacks"):
        write_quarantine_record(target, {"kind": "file", "tier": "warm"})
    with pytest.raises(ValueError, match="unknown quarantine kind"):
        write_quarantine_record(
            target,
            {"kind": "other", "tier": "warm", "region": "r", "source": None, "quarantined_at": ""},
        )
    assert list(tmp_path.iterdir()) == []


def test_release_rewrites_the_record_through_the_same_writer(tmp_path: Path) -> None:
    """Releasing a quarantined file keeps its record (renamed ``.released.json``) with the
    common keys intact plus when and where it was released."""
    moved = quarantined_data_file(tmp_path)
    back = release_file(moved, storage_root=tmp_path)
    assert back == tmp_path / "warm" / PARTITION / "part-0.parquet"
    record = json.loads(moved.with_name(moved.name + ".released.json").read_text())
    assert set(REQUIRED_KEYS) <= set(record)
    assert record["released_to"] == str(back)
