"""Partition path parsing and hostile-input-safe file resolution."""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path

import pytest

from cryptorun_daemon.errors import PathRejectedError
from cryptorun_daemon.storage.layout import (
    PartitionKey,
    parse_partition_dir,
    parse_partition_path,
    resolve_partition_file,
)

WARM = "trade/venue=kraken/symbol=BTC-USD/date=2025-09-01/hour=03"


def test_warm_path_round_trips() -> None:
    """An hourly path parses into a typed key that formats back to the same path."""
    key = parse_partition_path("warm", WARM)
    assert key == PartitionKey(date(2025, 9, 1), 3, "warm", "trade", "kraken", "BTC-USD")
    assert key.relpath == WARM
    assert (key.end - key.start).total_seconds() == 3600


def test_cold_partitions_are_daily() -> None:
    """Cold keys have no hour and span a whole day; an hour level is refused for cold."""
    key = parse_partition_path("cold", "book/venue=kraken/symbol=ETH-USD/date=2025-09-01")
    assert key.hour is None
    assert (key.end - key.start).days == 1
    with pytest.raises(PathRejectedError):
        parse_partition_path("cold", WARM)
    with pytest.raises(PathRejectedError):
        parse_partition_path("warm", "book/venue=kraken/symbol=ETH-USD/date=2025-09-01")


@pytest.mark.parametrize(
    "path",
    [
        "",
        "/etc/passwd",
        "../../etc/passwd",
        "trade/venue=kraken/symbol=BTC-USD/date=2025-09-01/hour=03/../../..",
        "trade/venue=kraken/symbol=BTC-USD/date=2025-09-01/hour=03/./x",
        "trade/venue=kraken/symbol=BTC-USD/date=2025-09-01/hour=03/..%2Fx",
        "trade/venue=kraken/symbol=BTC-USD/date=2025-09-01/hour=03/a\\b",
        "trade/venue=kraken/symbol=BTC-USD/date=2025-09-01/hour=03/a\x00b",
        "trade/venue=kraken/symbol=BTC-USD/date=2025-09-01/hour=03/.hidden",
        "trade//venue=kraken/symbol=BTC-USD/date=2025-09-01/hour=03",
        "trade/venue=kraken/symbol=btc_usd/date=2025-09-01/hour=03",
        "trade/venue=kraken/symbol=BTC-USD/date=2025-02-30/hour=03",
        "trade/venue=kraken/symbol=BTC-USD/date=2025-09-01/hour=24",
        "trade/venue=Kraken/symbol=BTC-USD/date=2025-09-01/hour=03",
        "Trade/venue=kraken/symbol=BTC-USD/date=2025-09-01/hour=03",
        "trade/venue=kraken/symbol=BTC-USD/date=2025-09-01",
        "trade/venue=kraken/symbol=BTC-USD/date=2025-9-1/hour=03",
    ],
)
def test_hostile_and_malformed_names_are_rejected(path: str) -> None:
    """Traversal, encoded separators, hidden names and off-layout values never parse."""
    with pytest.raises(PathRejectedError):
        parse_partition_path("warm", path)


def _partition(root: Path) -> Path:
    directory = root / "warm" / WARM
    directory.mkdir(parents=True)
    (directory / "part-0.parquet").write_bytes(b"data")
    return directory


def test_resolve_finds_a_real_file_inside_the_root(tmp_path: Path) -> None:
    """A well-formed path to an existing file resolves to that file."""
    _partition(tmp_path)
    key, name, real = resolve_partition_file(tmp_path, "warm", f"{WARM}/part-0.parquet")
    assert name == "part-0.parquet"
    assert real.read_bytes() == b"data"
    assert key.hour == 3


@pytest.mark.parametrize(
    "path",
    [
        f"{WARM}/../../../../etc/passwd",
        f"{WARM}/_SUCCESS",
        f"{WARM}/.part-0.parquet.partial",
        "/etc/passwd",
        WARM,
    ],
)
def test_resolve_rejects_hostile_paths(tmp_path: Path, path: str) -> None:
    """Traversal, markers, partials and partition-only paths are 400-class errors."""
    _partition(tmp_path)
    with pytest.raises(PathRejectedError):
        resolve_partition_file(tmp_path, "warm", path)


def test_resolve_refuses_symlinks_escaping_the_root(tmp_path: Path) -> None:
    """A symlink inside a partition, even to a real file, resolves to 'not found'."""
    root = tmp_path / "root"
    directory = _partition(root)
    secret = tmp_path / "secret.parquet"
    secret.write_bytes(b"secret")
    os.symlink(secret, directory / "part-1.parquet")
    with pytest.raises(FileNotFoundError):
        resolve_partition_file(root, "warm", f"{WARM}/part-1.parquet")


def test_resolve_refuses_a_symlinked_directory(tmp_path: Path) -> None:
    """A partition directory that is a symlink to elsewhere is not served."""
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "part-0.parquet").write_bytes(b"x")
    parent = root / "warm" / "trade/venue=kraken/symbol=BTC-USD/date=2025-09-01"
    parent.mkdir(parents=True)
    os.symlink(outside, parent / "hour=03")
    with pytest.raises(FileNotFoundError):
        resolve_partition_file(root, "warm", f"{WARM}/part-0.parquet")


def test_parse_partition_dir_reads_the_tail_of_any_root(tmp_path: Path) -> None:
    """Sealing tools pass a directory; tier and key come from its last segments."""
    directory = _partition(tmp_path / "some" / "root")
    assert parse_partition_dir(directory).relpath == WARM
    with pytest.raises(PathRejectedError):
        parse_partition_dir(tmp_path)
