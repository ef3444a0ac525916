"""A partition's ``_quarantine.json`` names only files of the version that is committed.

Regression for the seed 2026 soak: a region kept a sidecar entry for a late-fill
file of an earlier, never-committed version, while the other regions, holding
byte-identical partitions, had no such entry.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from cryptorun_daemon.config.model import ValidationConfig
from cryptorun_daemon.data.validate import partition_validator
from cryptorun_daemon.metrics import Metrics
from cryptorun_daemon.storage.layout import PartitionKey
from cryptorun_daemon.storage.quarantine_sidecar import SIDECAR_NAME, prune_sidecar
from cryptorun_daemon.storage.seal import seal_partition
from tests.harness.testdata import partition_trades, write_trade_partition
from tests.unit.test_executor import T0, Pair, pair  # noqa: F401  (the loopback fixture)


def _entry(flagged: int) -> dict[str, object]:
    return {"flagged_rows": flagged, "findings": [{"check": "anomaly", "rows": [[0, flagged]]}]}


def _write_sidecar(folder: Path, names: dict[str, int]) -> None:
    doc = {"version": 1, "files": {n: _entry(k) for n, k in names.items()}}
    (folder / SIDECAR_NAME).write_text(json.dumps(doc))


def test_prune_keeps_listed_files_and_drops_the_rest(tmp_path: Path) -> None:
    _write_sidecar(tmp_path, {"a.parquet": 1, "gone.parquet": 2})
    assert prune_sidecar(tmp_path, {"a.parquet", "b.parquet"}) == ["gone.parquet"]
    doc = json.loads((tmp_path / SIDECAR_NAME).read_text())
    assert doc["files"] == {"a.parquet": _entry(1)}
    assert doc["version"] == 1
    # Nothing more to drop: the file is not rewritten.
    mtime = (tmp_path / SIDECAR_NAME).stat().st_mtime_ns
    assert prune_sidecar(tmp_path, {"a.parquet"}) == []
    assert (tmp_path / SIDECAR_NAME).stat().st_mtime_ns == mtime


def test_prune_removes_a_sidecar_left_empty(tmp_path: Path) -> None:
    _write_sidecar(tmp_path, {"gone.parquet": 2})
    assert prune_sidecar(tmp_path, {"a.parquet"}) == ["gone.parquet"]
    assert not (tmp_path / SIDECAR_NAME).exists()
    assert prune_sidecar(tmp_path, {"a.parquet"}) == []  # no sidecar: nothing to do


def test_prune_leaves_an_unreadable_sidecar_alone(tmp_path: Path) -> None:
    (tmp_path / SIDECAR_NAME).write_text("{not json")
    assert prune_sidecar(tmp_path, set()) == []
    assert (tmp_path / SIDECAR_NAME).read_text() == "{not json"


def test_a_seal_forgets_findings_about_files_it_does_not_list(tmp_path: Path) -> None:
    """The writer's path: a re-seal after a file left the folder drops that file's entry."""
    key = PartitionKey(
        day=T0.date(), hour=5, tier="warm", dataset="trade", venue="kraken", symbol="BTC-USD"
    )
    folder = write_trade_partition(tmp_path, key, rows=100, files=2)
    names = sorted(p.name for p in folder.glob("*.parquet"))
    _write_sidecar(folder, {names[0]: 3, "late-fill-old.parquet": 5})
    manifest = seal_partition(folder, writer_region="eu-central", epoch=1)
    assert {f.name for f in manifest.files} == set(names)
    doc = json.loads((folder / SIDECAR_NAME).read_text())
    assert set(doc["files"]) == {names[0]}


async def test_a_replica_commit_forgets_a_stray_of_an_uncommitted_version(
    pair: Pair,  # noqa: F811
) -> None:
    """The soak's case: a download of a version that was never committed left a validated
    file (and its sidecar entry) in the replica's folder; the version that is committed
    does not list it. The stray is set aside and the sidecar no longer names it."""
    manifest = (await pair.manifests())[0]
    directory = manifest.key.directory(pair.dst_root)
    directory.mkdir(parents=True)
    stray = directory / "late-fill-20261206T164451Z-stray.parquet"
    stray.write_bytes(b"an earlier version's late fill")
    _write_sidecar(directory, {stray.name: 4})
    await pair.executor().replicate_partition(manifest)
    assert (directory / "_SUCCESS").is_file()
    assert not stray.exists()
    assert not (directory / SIDECAR_NAME).exists()
    kept = list((pair.dst_root / "_superseded").rglob(stray.name))
    assert len(kept) == 1  # set aside, not deleted


def test_a_file_rewritten_clean_under_its_name_loses_its_old_findings(tmp_path: Path) -> None:
    """Regression (chaos soak, seed 2027): a window file validated with flagged rows, then
    rewritten under the same name with clean bytes (the window redone after a kill before
    its seal), kept the old bytes' sidecar entry at the primary. Validating the new bytes
    clean now drops it, so the region agrees with replicas holding the same bytes."""
    key = PartitionKey(
        day=T0.date(), hour=5, tier="warm", dataset="trade", venue="kraken", symbol="BTC-USD"
    )
    folder = key.directory(tmp_path)
    folder.mkdir(parents=True)
    path = folder / "part-window.parquet"
    table = partition_trades(key, 50, origin="eu-central", seed=1)
    ahead = table.column("ingest_ts").to_numpy() - 5_000_000_000  # received 5 s "early"
    drifted = table.set_column(
        table.schema.get_field_index("ingest_ts"),
        table.schema.field("ingest_ts"),
        pa.array(ahead, type=table.schema.field("ingest_ts").type),
    )
    pq.write_table(drifted, path)
    metrics = Metrics()
    validate = partition_validator(
        region="eu-central", config=ValidationConfig(), metrics=metrics, storage_root=tmp_path
    )
    assert validate(path, "trade", "warm").status == "rows_flagged"
    assert path.name in json.loads((folder / SIDECAR_NAME).read_text())["files"]
    pq.write_table(table, path)  # the same name, new (clean) bytes
    assert validate(path, "trade", "warm").status == "clean"
    assert not (folder / SIDECAR_NAME).exists()
