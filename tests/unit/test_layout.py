"""Partition path parsing and hostile-input-safe file resolution."""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cryptorun_daemon.data.validate.quarantine import quarantine_destination
from cryptorun_daemon.errors import PathRejectedError
from cryptorun_daemon.hot.partition_writer import partition_dir
from cryptorun_daemon.storage.layout import (
    PartitionKey,
    check_segment,
    parse_partition_dir,
    parse_partition_path,
    quarantine_dir,
    resolve_partition_file,
    symbol_segment,
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


# --- the one segment rule, and the writers that build paths with it -----------------

SEGMENT_CASES = [
    ("venue", "kraken", True),
    ("venue", "binance-us_2", True),
    ("venue", "../../../../escaped", False),
    ("venue", "Kraken", False),
    ("venue", "kraken\n", False),
    ("venue", "", False),
    ("venue", "a/b", False),
    ("symbol", "BTC-USD", True),
    ("symbol", "BTC/USD", False),
    ("symbol", "../BTC-USD", False),
    ("dataset", "trade", True),
    ("dataset", "trade/..", False),
    ("region", "eu-central", True),
    ("region", "../eu", False),
]


@pytest.mark.parametrize(("kind", "value", "ok"), SEGMENT_CASES)
def test_check_segment_is_the_single_rule_for_path_segments(
    kind: str, value: str, ok: bool
) -> None:
    """Valid names pass unchanged; separators, dot-dot, case and trailing newlines do not."""
    if ok:
        assert check_segment(kind, value) == value  # type: ignore[arg-type]
    else:
        with pytest.raises(PathRejectedError):
            check_segment(kind, value)  # type: ignore[arg-type]


@settings(max_examples=500, deadline=None)
@given(
    kind=st.sampled_from(["dataset", "venue", "symbol", "region"]),
    value=st.text(max_size=30) | st.sampled_from(["..", ".", "a/..", "/", "\\", "x\x00"]),
)
def test_an_accepted_segment_never_leaves_its_directory(kind: str, value: str) -> None:
    """Whatever the value, if the rule accepts it, root/value is a direct child of root."""
    try:
        check_segment(kind, value)  # type: ignore[arg-type]
    except PathRejectedError:
        return
    root = Path("/srv/root")
    child = Path(os.path.normpath(root / value))
    assert child.parent == root
    assert child.name == value


def test_partition_keys_cannot_hold_a_bad_segment() -> None:
    """A PartitionKey — and so every directory built from it — refuses hostile values."""
    with pytest.raises(PathRejectedError):
        PartitionKey(date(2025, 9, 1), 3, "warm", "trade", "../../../../escaped", "BTC-USD")
    with pytest.raises(PathRejectedError):
        PartitionKey(date(2025, 9, 1), 3, "warm", "trade", "kraken", "../x")
    with pytest.raises(PathRejectedError):
        PartitionKey(date(2025, 9, 1), 24, "warm", "trade", "kraken", "BTC-USD")
    with pytest.raises(PathRejectedError):
        PartitionKey(date(2025, 9, 1), 3, "lukewarm", "trade", "kraken", "BTC-USD")  # type: ignore[arg-type]


def test_hot_partition_writer_refuses_a_venue_that_escapes_the_root(tmp_path: Path) -> None:
    """The hot sealer's directory builder raises instead of naming a path outside the root,
    whatever journal line the venue came from."""
    ts = 1_756_695_600_000_000_000  # 2025-09-01T03:00:00Z
    good = partition_dir(tmp_path, "trade", "kraken", "BTC/USD", ts)
    assert good == tmp_path / "warm" / WARM
    for venue, symbol in (("../../../../escaped", "BTC/USD"), ("kraken", "../../x/y")):
        with pytest.raises(PathRejectedError):
            partition_dir(tmp_path, "trade", venue, symbol, ts)
    with pytest.raises(PathRejectedError):
        partition_dir(tmp_path, "../trade", "kraken", "BTC/USD", ts)
    assert symbol_segment("ETH/USD") == "ETH-USD"


def test_quarantine_paths_refuse_bad_tier_and_region(tmp_path: Path) -> None:
    """Both quarantine writers build ``_quarantine/{tier}/{region}`` through the layout."""
    key = parse_partition_path("warm", WARM)
    assert quarantine_dir(tmp_path, "warm", "us-east", key) == (
        tmp_path / "_quarantine" / "warm" / "us-east" / WARM
    )
    with pytest.raises(PathRejectedError):
        quarantine_dir(tmp_path, "warm", "../../etc", key)
    with pytest.raises(PathRejectedError):
        quarantine_dir(tmp_path, "../warm", "us-east", None)
    with pytest.raises(PathRejectedError):
        quarantine_destination(
            tmp_path / "warm" / "x.parquet", storage_root=tmp_path, tier="warm", region="../x"
        )
