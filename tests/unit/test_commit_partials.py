"""No unfinished write survives a commit point in a sealed partition folder.

Regression for the chaos run of seed 7 (README test command, 2026-12-06): a
replica kept a 0-byte ``.part-….parquet.partial`` of an earlier version's file
(its download cut by a fault) in a partition it then committed in the newer
version, so its sealed folder differed from the other regions' holding the same
files.
"""

from __future__ import annotations

from pathlib import Path

from cryptorun_daemon.storage.layout import PartitionKey, drop_partials
from cryptorun_daemon.storage.seal import seal_partition
from tests.harness.testdata import write_trade_partition
from tests.unit.test_executor import T0, Pair, pair  # noqa: F401  (the loopback fixture)


def _visible_and_hidden(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_drop_partials_removes_only_hidden_partials(tmp_path: Path) -> None:
    (tmp_path / ".part-a.parquet.partial").write_bytes(b"")
    (tmp_path / ".part-b.parquet.partial").write_bytes(b"half a file")
    (tmp_path / "part-a.parquet").write_bytes(b"data")
    (tmp_path / "notes.partial").write_bytes(b"not hidden: not ours")
    (tmp_path / ".elsewhere.partial").symlink_to(tmp_path / "part-a.parquet")
    assert drop_partials(tmp_path) == [".part-a.parquet.partial", ".part-b.parquet.partial"]
    assert _visible_and_hidden(tmp_path) == {
        "part-a.parquet",
        "notes.partial",
        ".elsewhere.partial",
    }
    assert (tmp_path / "part-a.parquet").read_bytes() == b"data"
    assert drop_partials(tmp_path) == []


def test_a_seal_leaves_no_unfinished_write_in_the_folder(tmp_path: Path) -> None:
    """The writer's path: a window file whose writer was killed mid-write is gone once the
    partition is sealed without it."""
    key = PartitionKey(
        day=T0.date(), hour=5, tier="warm", dataset="trade", venue="kraken", symbol="BTC-USD"
    )
    folder = write_trade_partition(tmp_path, key, rows=100, files=2)
    (folder / ".part-20261206T222700Z.parquet.partial").write_bytes(b"")
    manifest = seal_partition(folder, writer_region="eu-central", epoch=1)
    assert _visible_and_hidden(folder) == {f.name for f in manifest.files} | {
        "_manifest.json",
        "_SUCCESS",
    }


async def test_a_replica_commit_leaves_no_partial_of_an_earlier_version(
    pair: Pair,  # noqa: F811
) -> None:
    """The run's case: a cut download of a file the committed version does not list left
    its partial in the replica's folder. After the commit the folder holds exactly what
    the source's sealed folder holds."""
    manifest = (await pair.manifests())[0]
    directory = manifest.key.directory(pair.dst_root)
    directory.mkdir(parents=True)
    (directory / ".part-20261206T222700Z.parquet.partial").write_bytes(b"")
    await pair.executor().replicate_partition(manifest)
    assert (directory / "_SUCCESS").is_file()
    source = manifest.key.directory(pair.src_root)
    assert _visible_and_hidden(directory) == _visible_and_hidden(source)
