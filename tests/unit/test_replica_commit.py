"""The replica's commit point: manifest first, then ``_SUCCESS`` under the fence lock.

Real files and real threads. The root's write permit (normally the daemon's
etcd lease check) runs under the fence lock right before ``_SUCCESS`` is
created, so the tests use it to act at exactly that moment. "Still blocked"
is observed as a thread that has not finished after a bounded wait, which a
slow machine can only make more likely, never less.
"""

from __future__ import annotations

import shutil
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from cryptorun_daemon.errors import WriteRefusedError
from cryptorun_daemon.metrics import Metrics
from cryptorun_daemon.replication.apply_policy import ApplyPolicy
from cryptorun_daemon.replication.commit import PartitionCommitter
from cryptorun_daemon.storage.change_feed import ChangeFeed
from cryptorun_daemon.storage.fence_lock import install_write_permit
from cryptorun_daemon.storage.layout import MANIFEST_NAME, SUCCESS_MARKER, PartitionKey
from cryptorun_daemon.storage.manifest import HashCache, Manifest, read_manifest
from cryptorun_daemon.storage.seal import seal_partition
from cryptorun_daemon.storage.write_fence import advance_fence, read_fence
from tests.harness.testdata import write_trade_partition

EU, US = "eu-central", "us-east"
T0 = datetime(2025, 9, 1, tzinfo=UTC)
BLOCKED_FOR = 0.5  # how long a blocked thread is given to (wrongly) get through


def key() -> PartitionKey:
    return PartitionKey(
        day=T0.date(), hour=5, tier="warm", dataset="trade", venue="kraken", symbol="BTC-USD"
    )


def staged_copy(tmp_path: Path) -> tuple[Path, Path, Manifest]:
    """A replica root (fence: eu-central primary at epoch 1) holding the data files of a
    partition eu-central sealed, not yet committed; returns (root, directory, manifest)."""
    source, root = tmp_path / "source", tmp_path / "replica"
    sealed = write_trade_partition(source, key(), rows=20, origin=EU)
    manifest = seal_partition(sealed, writer_region=EU, epoch=1, cache=HashCache())
    directory = key().directory(root)
    directory.mkdir(parents=True)
    for entry in manifest.files:
        shutil.copyfile(sealed / entry.name, directory / entry.name)
    advance_fence(root, "warm", epoch=1, primary=EU, updated_at=T0, transitions=[(1, T0, EU)])
    return root, directory, manifest


def committer(root: Path) -> PartitionCommitter:
    metrics = Metrics(CollectorRegistry())
    policy = ApplyPolicy(root=root, region=US, source_region=EU, metrics=metrics)
    return PartitionCommitter(root=root, metrics=metrics, policy=policy)


def promote_us(root: Path) -> None:
    now = datetime.now(UTC)
    advance_fence(
        root, "warm", epoch=2, primary=US, updated_at=now, transitions=[(1, T0, EU), (2, now, US)]
    )


def test_a_promotion_during_the_replica_commit_waits_until_success_exists(
    tmp_path: Path,
) -> None:
    """A fence advance started while the replica's commit sits between its last fence
    check and ``_SUCCESS`` blocks until the partition is committed: the manifest and
    ``_SUCCESS`` land before epoch 2 is recorded, the copy counts as legitimate history,
    and the seal is in the replica's change feed."""
    root, directory, manifest = staged_copy(tmp_path)
    advancing = threading.Thread(target=promote_us, args=(root,))
    advanced_during_commit: list[bool] = []

    def permit(_tier: str) -> tuple[str, str] | None:
        # Asked once, under the fence lock, right before _SUCCESS is created.
        assert (directory / MANIFEST_NAME).is_file()
        advancing.start()
        advancing.join(BLOCKED_FOR)
        advanced_during_commit.append(not advancing.is_alive())
        return None

    remove = install_write_permit(root, permit)
    try:
        committer(root).commit(directory, manifest)
    finally:
        remove()
        if advancing.ident is not None:
            advancing.join()
    assert advanced_during_commit == [False], "a promotion was recorded between check and commit"
    assert (directory / SUCCESS_MARKER).is_file()
    assert read_manifest(directory) == manifest
    fence = read_fence(root, "warm")
    assert fence is not None
    assert (fence.epoch, fence.classify(manifest)) == (2, "history")
    held = ChangeFeed(root).lookup("warm", [manifest.partition])
    assert held[manifest.partition].content_hash == manifest.content_hash


def test_a_permit_refused_at_the_replica_commit_point_leaves_the_copy_unsealed(
    tmp_path: Path,
) -> None:
    """The write permit refusing at the commit point leaves the manifest written but no
    ``_SUCCESS`` (an unsealed directory nobody reads) and nothing in the change feed."""
    root, directory, manifest = staged_copy(tmp_path)
    remove = install_write_permit(root, lambda _tier: ("no_lease", "lease lost"))
    try:
        with pytest.raises(WriteRefusedError):
            committer(root).commit(directory, manifest)
    finally:
        remove()
    assert (directory / MANIFEST_NAME).is_file()
    assert not (directory / SUCCESS_MARKER).exists()
    assert ChangeFeed(root).lookup("warm", [manifest.partition]) == {}
