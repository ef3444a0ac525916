"""Manifests: content, hashing cache, canonical bytes, sealing protocol."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cryptorun_daemon.errors import PathRejectedError, StorageError
from cryptorun_daemon.storage.layout import PartitionKey, parse_partition_path
from cryptorun_daemon.storage.manifest import HashCache, Manifest, hash_file, read_manifest
from cryptorun_daemon.storage.seal import is_sealed, seal_partition
from tests.harness.testdata import write_trade_partition

KEY = parse_partition_path("warm", "trade/venue=kraken/symbol=BTC-USD/date=2025-09-01/hour=00")
SEALED_AT = datetime(2025, 9, 1, 1, 0, 5, tzinfo=UTC)


def _write(root: Path, key: PartitionKey = KEY, rows: int = 500, files: int = 2) -> Path:
    return write_trade_partition(root, key, rows=rows, files=files)


def test_seal_writes_manifest_and_success(tmp_path: Path) -> None:
    """Sealing records files, bytes, rows, per-file xxh3-128, window, schema, writer, epoch."""
    directory = _write(tmp_path)
    manifest = seal_partition(
        directory, writer_region="eu-central", epoch=3, sealed_at=SEALED_AT, cache=HashCache()
    )
    assert is_sealed(directory)
    doc = json.loads((directory / "_manifest.json").read_text())
    assert doc["window"] == {"start": "2025-09-01T00:00:00Z", "end": "2025-09-01T01:00:00Z"}
    assert [f["name"] for f in doc["files"]] == ["part-0000.parquet", "part-0001.parquet"]
    assert doc["rows"] == 500
    assert doc["bytes"] == sum((directory / f["name"]).stat().st_size for f in doc["files"])
    assert doc["files"][0]["hash"] == hash_file(directory / "part-0000.parquet")
    assert doc["files"][0]["hash"].startswith("xxh3_128:")
    assert doc["schema_fingerprint"].startswith("xxh3_128:")
    assert (doc["writer_region"], doc["epoch"]) == ("eu-central", 3)
    assert read_manifest(directory) == manifest


def test_seal_is_idempotent_for_unchanged_files(tmp_path: Path) -> None:
    """Sealing twice returns the first manifest and does not rewrite it."""
    directory = _write(tmp_path)
    first = seal_partition(directory, writer_region="eu-central", epoch=1, sealed_at=SEALED_AT)
    before = (directory / "_manifest.json").stat().st_mtime_ns
    second = seal_partition(directory, writer_region="eu-central", epoch=2)
    assert second == first
    assert (directory / "_manifest.json").stat().st_mtime_ns == before


def test_reseal_after_a_change_gives_a_new_content_hash(tmp_path: Path) -> None:
    """Changing a file and sealing again records the new content."""
    directory = _write(tmp_path)
    first = seal_partition(directory, writer_region="eu-central", epoch=1)
    (directory / "late-fill.bin").write_bytes(b"late file")
    second = seal_partition(directory, writer_region="eu-central", epoch=1)
    assert second.content_hash != first.content_hash
    assert is_sealed(directory)


def test_hash_cache_never_rehashes_unchanged_files(tmp_path: Path) -> None:
    """Facts are keyed by (path, size, mtime_ns, inode): only a rewrite triggers hashing."""
    directory = _write(tmp_path)
    cache = HashCache()
    seal_partition(directory, writer_region="eu-central", epoch=1, cache=cache)
    assert cache.hashed == 2
    seal_partition(directory, writer_region="eu-central", epoch=1, cache=cache)
    assert cache.hashed == 2
    target = directory / "part-0000.parquet"
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    seal_partition(directory, writer_region="eu-central", epoch=1, cache=cache)
    assert cache.hashed == 3


def test_canonical_bytes_round_trip(tmp_path: Path) -> None:
    """A manifest's bytes parse back to an equal manifest and re-serialise identically."""
    manifest = seal_partition(
        _write(tmp_path),
        writer_region="eu-central",
        epoch=1,
        sources=[{"venue": "kraken", "origin": "eu-central"}],
        worst_freshness_seconds=1.5,
    )
    again = Manifest.from_bytes(manifest.to_bytes())
    assert again == manifest
    assert again.to_bytes() == manifest.to_bytes()
    assert again.sources == ({"venue": "kraken", "origin": "eu-central"},)


def test_tampered_manifest_is_rejected(tmp_path: Path) -> None:
    """A manifest whose file hashes disagree with its recorded content hash is unusable."""
    directory = _write(tmp_path)
    seal_partition(directory, writer_region="eu-central", epoch=1)
    doc = json.loads((directory / "_manifest.json").read_text())
    doc["files"][0]["hash"] = "xxh3_128:" + "0" * 32
    with pytest.raises(StorageError, match="content_hash"):
        Manifest.from_json(doc)
    doc["files"][0]["name"] = "../escape"
    with pytest.raises(StorageError):
        Manifest.from_json(doc)


def test_sealing_refuses_empty_or_foreign_directories(tmp_path: Path) -> None:
    """No data files, a nested directory, or a path outside the layout cannot be sealed."""
    empty = KEY.directory(tmp_path)
    empty.mkdir(parents=True)
    with pytest.raises(StorageError, match="no data files"):
        seal_partition(empty, writer_region="eu-central", epoch=1)
    (empty / "nested").mkdir()
    with pytest.raises(StorageError, match="regular file"):
        seal_partition(empty, writer_region="eu-central", epoch=1)
    with pytest.raises(PathRejectedError):
        seal_partition(tmp_path, writer_region="eu-central", epoch=1)
    assert not is_sealed(empty)


def test_identical_content_has_equal_hash_regardless_of_writer(tmp_path: Path) -> None:
    """content_hash ignores seal time, writer region and epoch: it is about the bytes."""
    directory = _write(tmp_path)
    a = seal_partition(directory, writer_region="eu-central", epoch=1)
    b = Manifest(
        tier=a.tier,
        partition=a.partition,
        files=a.files,
        schema_fingerprint=a.schema_fingerprint,
        writer_region="us-east",
        epoch=7,
        sealed_at=SEALED_AT,
    )
    assert a.content_hash == b.content_hash
