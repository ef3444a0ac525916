"""The fence lock: a seal's last fence check and its rename are one step a promotion cannot split.

Real files, real threads and a real second process holding the ``flock``. The
root's write permit (normally the daemon's etcd lease check) is the hook that
runs under the lock right before the rename, so the tests use it to act at
exactly that moment. No timing assertions: "still blocked" is observed as a
thread that has not finished after a bounded wait, which a slow machine can
only make more likely, never less.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cryptorun_daemon.errors import FencedError, WriteRefusedError
from cryptorun_daemon.storage.fence_lock import install_write_permit, lock_path
from cryptorun_daemon.storage.layout import SUCCESS_MARKER, PartitionKey
from cryptorun_daemon.storage.manifest import HashCache, read_manifest
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


def promote_us(root: Path) -> None:
    """Record us-east's promotion to epoch 2 in the fence (what the failover component does)."""
    now = datetime.now(UTC)
    advance_fence(
        root,
        "warm",
        epoch=2,
        primary=US,
        updated_at=now,
        transitions=[(1, T0, EU), (2, now, US)],
    )


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A root whose fence says eu-central is primary of warm at epoch 1."""
    advance_fence(tmp_path, "warm", epoch=1, primary=EU, updated_at=T0, transitions=[(1, T0, EU)])
    return tmp_path


def test_a_promotion_recorded_during_a_seal_commit_waits_until_the_rename_is_done(
    root: Path,
) -> None:
    """A fence advance started while a seal sits between its last check and its rename
    blocks until the seal has committed: the seal's epoch-1 manifest lands before epoch 2
    is recorded, so the fence classifies it as legitimate history, not divergent."""
    directory = write_trade_partition(root, key(), rows=20, origin=EU)
    advancing = threading.Thread(target=promote_us, args=(root,))
    advanced_during_commit: list[bool] = []
    calls: list[str] = []

    def permit(tier: str) -> tuple[str, str] | None:
        calls.append(tier)
        if len(calls) == 2:  # the ask under the fence lock, right before the rename
            advancing.start()
            advancing.join(BLOCKED_FOR)
            advanced_during_commit.append(not advancing.is_alive())
        return None

    remove = install_write_permit(root, permit)
    try:
        manifest = seal_partition(directory, writer_region=EU, epoch=1, cache=HashCache())
    finally:
        remove()
        if advancing.ident is not None:
            advancing.join()
    assert advanced_during_commit == [False], "a promotion was recorded between check and rename"
    fence = read_fence(root, "warm")
    assert fence is not None
    assert (fence.epoch, fence.primary) == (2, US)
    assert read_manifest(directory) == manifest
    assert fence.classify(manifest) == "history"


def test_a_promotion_recorded_before_the_commit_point_makes_the_seal_re_read_and_refuse(
    root: Path,
) -> None:
    """The fence advances after the seal's first check (before hashing) but before its
    commit: the seal re-reads the fence under the lock and refuses; nothing is sealed."""
    directory = write_trade_partition(root, key(), rows=20, origin=EU)
    calls: list[str] = []

    def permit(tier: str) -> tuple[str, str] | None:
        calls.append(tier)
        if len(calls) == 1:  # the early check, outside the lock: promote now
            promote_us(root)
        return None

    remove = install_write_permit(root, permit)
    try:
        with pytest.raises(FencedError, match="current primary of warm is us-east at epoch 2"):
            seal_partition(directory, writer_region=EU, epoch=1, cache=HashCache())
    finally:
        remove()
    assert calls == ["warm"]  # refused by the fence re-read, before the permit's second ask
    assert not (directory / SUCCESS_MARKER).exists()


def test_a_write_permit_that_says_no_at_the_commit_point_leaves_the_partition_unsealed(
    root: Path,
) -> None:
    """The permit (the daemon's lease check) is asked again right before the rename: a lease
    that ran low while the files were hashed refuses the seal with its reason."""
    directory = write_trade_partition(root, key(), rows=20, origin=EU)
    answers: list[tuple[str, str] | None] = [None, ("lease_expiring", "1.0 s left")]

    def permit(tier: str) -> tuple[str, str] | None:
        return answers.pop(0)

    remove = install_write_permit(root, permit)
    try:
        with pytest.raises(WriteRefusedError) as refused:
            seal_partition(directory, writer_region=EU, epoch=1, cache=HashCache())
    finally:
        remove()
    assert refused.value.reason == "lease_expiring"
    assert not (directory / SUCCESS_MARKER).exists()


def test_another_process_holding_the_fence_lock_blocks_a_promotion_until_it_lets_go(
    root: Path,
) -> None:
    """The lock is an flock on _state/fence/warm.lock as well, so a second process sharing
    the root (the `cryptorun partitions seal` CLI) excludes a fence advance here too."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys\n"
            f"fd = os.open({str(lock_path(root, 'warm'))!r}, os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('locked', flush=True)\n"
            "sys.stdin.readline()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdin is not None
        assert holder.stdout.readline() == b"locked\n"
        advancing = threading.Thread(target=promote_us, args=(root,))
        advancing.start()
        advancing.join(BLOCKED_FOR)
        assert advancing.is_alive(), "the fence advanced while another process held the lock"
        fence = read_fence(root, "warm")
        assert fence is not None
        assert fence.epoch == 1
        holder.stdin.write(b"go\n")
        holder.stdin.flush()
        advancing.join()
    finally:
        holder.kill()
        holder.wait()
    fence = read_fence(root, "warm")
    assert fence is not None
    assert fence.epoch == 2
