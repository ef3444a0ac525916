"""The file state store: durable JSON under ``_state/``, atomic across real processes."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cryptorun_daemon.config.model import AdminConfig, Config, StorageConfig
from cryptorun_daemon.errors import ConflictError, StateStoreError, UsageError
from cryptorun_daemon.failover.roles import Snapshot
from cryptorun_daemon.failover.store import open_state_store, run_heartbeats
from cryptorun_daemon.failover.store_file import FileStateStore
from cryptorun_daemon.runtime.clock import FakeClock

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> FileStateStore:
    return FileStateStore(tmp_path, lease_ttl=10.0, clock=clock, poll_interval=0.02)


async def test_get_before_initialise_is_a_store_error(store: FileStateStore) -> None:
    """Reading a tier that was never initialised says so instead of inventing a primary."""
    with pytest.raises(StateStoreError, match="no state yet"):
        await store.get("warm")


async def test_initialise_is_idempotent_and_the_stored_state_wins(store: FileStateStore) -> None:
    """The first initialise sets epoch 1; later calls return the stored state unchanged."""
    first = await store.initialise("warm", "eu-central")
    assert (first.primary, first.epoch) == ("eu-central", 1)
    again = await store.initialise("warm", "us-east")
    assert again == first
    assert await store.get("warm") == first


async def test_initialise_refuses_the_hot_tier(store: FileStateStore) -> None:
    """Hot has no primary, so it cannot be initialised with one."""
    with pytest.raises(UsageError):
        await store.initialise("hot", "eu-central")


async def test_promotion_is_persisted_and_visible_to_a_new_store(
    tmp_path: Path, store: FileStateStore, clock: FakeClock
) -> None:
    """A promotion is on disk when ``promote`` returns: a fresh store (another process) reads it."""
    await store.initialise("warm", "eu-central")
    clock.advance(60)
    promoted = await store.promote("warm", "us-east", "eu-central", 1)
    assert (promoted.primary, promoted.epoch) == ("us-east", 2)
    reopened = FileStateStore(tmp_path)
    assert await reopened.get("warm") == promoted
    doc = json.loads((tmp_path / "_state" / "roles.json").read_text())
    assert doc["tiers"]["warm"]["epoch"] == 2
    assert doc["tiers"]["warm"]["updated_at"] == "2025-09-01T00:01:00Z"


async def test_tiers_are_independent(store: FileStateStore) -> None:
    """Promoting warm leaves cold's primary and epoch alone."""
    await store.initialise("warm", "eu-central")
    cold = await store.initialise("cold", "eu-central")
    await store.promote("warm", "us-east", "eu-central", 1)
    assert await store.get("cold") == cold


async def test_conflicts_leave_the_state_unchanged(store: FileStateStore) -> None:
    """Stale epoch, promoting the primary and demoting a replica are refused without writing."""
    await store.initialise("warm", "eu-central")
    await store.promote("warm", "us-east", "eu-central", 1)
    before = await store.get("warm")
    with pytest.raises(ConflictError, match="stale epoch"):
        await store.promote("warm", "eu-central", "us-east", 1)
    with pytest.raises(ConflictError, match="already primary"):
        await store.promote("warm", "us-east", "eu-central", 2)
    with pytest.raises(ConflictError, match="cannot demote"):
        await store.promote("warm", "ap-south", "eu-central", 2)
    with pytest.raises(UsageError):
        await store.promote("warm", "us-east", "us-east", 2)
    assert await store.get("warm") == before


async def test_promote_of_an_uninitialised_tier_is_a_store_error(store: FileStateStore) -> None:
    """There is nothing to compare and swap before the tier exists."""
    with pytest.raises(StateStoreError, match="no state yet"):
        await store.promote("cold", "us-east", "eu-central", None)


async def test_writes_leave_no_temporary_files(tmp_path: Path, store: FileStateStore) -> None:
    """Atomic writes rename their temp file into place; nothing else is left in ``_state/``."""
    await store.initialise("warm", "eu-central")
    await store.promote("warm", "us-east", "eu-central", 1)
    await store.set_drained("eu-central", True)
    await store.heartbeat("eu-central")
    names = sorted(p.name for p in (tmp_path / "_state").iterdir())
    assert names == [".lock", "liveness.json", "roles.json"]


async def test_corrupt_state_file_is_reported_with_its_path(
    tmp_path: Path, store: FileStateStore
) -> None:
    """A torn or hand-edited file is an error naming the file, never silently reset."""
    await store.initialise("warm", "eu-central")
    roles = tmp_path / "_state" / "roles.json"
    roles.write_text('{"version": 1, "tiers": {"warm": ')
    with pytest.raises(StateStoreError, match=r"roles\.json: corrupt JSON"):
        await store.get("warm")
    with pytest.raises(StateStoreError, match=r"roles\.json"):
        await store.promote("warm", "us-east", "eu-central", 1)
    assert roles.read_text() == '{"version": 1, "tiers": {"warm": '


async def test_state_with_invalid_content_is_refused(tmp_path: Path, store: FileStateStore) -> None:
    """Valid JSON with a wrong shape (tier under the wrong name) is refused, naming the field."""
    await store.initialise("warm", "eu-central")
    roles = tmp_path / "_state" / "roles.json"
    doc = json.loads(roles.read_text())
    doc["tiers"]["cold"] = doc["tiers"]["warm"]
    roles.write_text(json.dumps(doc))
    with pytest.raises(StateStoreError, match=r"tiers\.cold holds tier warm"):
        await store.snapshot()


async def test_drain_flags_are_set_and_cleared(store: FileStateStore) -> None:
    """Draining marks a region; undraining removes it; repeating either is harmless."""
    await store.set_drained("eu-central", True)
    await store.set_drained("eu-central", True)
    await store.set_drained("us-east", True)
    assert await store.drained_regions() == {"eu-central", "us-east"}
    await store.set_drained("eu-central", False)
    await store.set_drained("eu-central", False)
    assert await store.drained_regions() == {"us-east"}


async def test_heartbeats_expire_after_the_lease_ttl(
    store: FileStateStore, clock: FakeClock
) -> None:
    """A region is alive for ``lease_ttl`` after its last heartbeat, then not."""
    assert await store.alive_regions() == frozenset()
    await store.heartbeat("eu-central")
    clock.advance(5)
    await store.heartbeat("us-east")
    assert await store.alive_regions() == {"eu-central", "us-east"}
    clock.advance(5)
    assert await store.alive_regions() == {"us-east"}
    await store.heartbeat("eu-central")
    clock.advance(9)
    assert await store.alive_regions() == {"eu-central"}


async def test_run_heartbeats_keeps_a_region_alive_until_cancelled(tmp_path: Path) -> None:
    """The heartbeat worker beats until cancelled (real clock, short TTL)."""
    store = FileStateStore(tmp_path, lease_ttl=5.0)
    task = asyncio.create_task(run_heartbeats(store, "eu-central", 0.01))
    try:
        async with asyncio.timeout(10):
            while "eu-central" not in await store.alive_regions():
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert task.cancelled()


async def test_snapshot_reads_tiers_drains_and_liveness_together(store: FileStateStore) -> None:
    """One snapshot carries every initialised tier, the drained and the alive regions."""
    warm = await store.initialise("warm", "eu-central")
    await store.set_drained("us-east", True)
    await store.heartbeat("eu-central")
    assert await store.snapshot() == Snapshot(
        tiers={"warm": warm}, drained=frozenset({"us-east"}), alive=frozenset({"eu-central"})
    )


async def test_changes_yields_current_state_then_changes_from_another_writer(
    tmp_path: Path, store: FileStateStore
) -> None:
    """``changes()`` starts with the current snapshot and then sees a promotion made elsewhere."""
    await store.initialise("warm", "eu-central")
    other = FileStateStore(tmp_path)  # e.g. the CLI, a different process
    async with asyncio.timeout(10), contextlib.aclosing(store.changes()) as snapshots:
        first = await anext(snapshots)
        assert first.tiers["warm"].epoch == 1
        await other.promote("warm", "us-east", "eu-central", 1)
        second = await anext(snapshots)
        assert second.tiers["warm"].epoch == 2
        assert second.tiers["warm"].primary == "us-east"
        await other.set_drained("ap-south", True)
        third = await anext(snapshots)
        assert third.drained == {"ap-south"}


async def test_changes_survives_a_corrupt_file_and_resumes(tmp_path: Path) -> None:
    """A corrupt file interrupts polling (logged, retried) without ending the iterator."""
    store = FileStateStore(tmp_path, poll_interval=0.01)
    await store.initialise("warm", "eu-central")
    roles = tmp_path / "_state" / "roles.json"
    good = roles.read_text()
    async with asyncio.timeout(10), contextlib.aclosing(store.changes()) as snapshots:
        assert (await anext(snapshots)).tiers["warm"].epoch == 1
        roles.write_text("{")
        await asyncio.sleep(0.05)
        roles.write_text(good)
        await FileStateStore(tmp_path).promote("warm", "us-east", "eu-central", 1)
        assert (await anext(snapshots)).tiers["warm"].epoch == 2


async def test_lock_timeout_is_a_clear_error(tmp_path: Path) -> None:
    """A writer that cannot get the lock in time fails with an error naming the lock file."""
    store = FileStateStore(tmp_path, lock_timeout=0.1)
    (tmp_path / "_state").mkdir()
    fd = os.open(tmp_path / "_state" / ".lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(StateStoreError, match=r"\.lock: still locked"):
            await store.initialise("warm", "eu-central")
    finally:
        os.close(fd)
    assert (await store.initialise("warm", "eu-central")).epoch == 1


async def test_open_state_store_builds_the_file_store_from_config(tmp_path: Path) -> None:
    """The factory picks the file backend by default, rooted at ``storage.root``."""
    config = Config(
        source=tmp_path / "region.toml",
        region="eu-central",
        admin=AdminConfig(host="127.0.0.1", port=9100, token_file=None),
        storage=StorageConfig(root=tmp_path / "data"),
        peers={"us-east": "http://127.0.0.1:9200"},
        rules=(),
    )
    store = open_state_store(config, clock=FakeClock())
    assert isinstance(store, FileStateStore)
    async with store:
        await store.initialise("warm", "eu-central")
    assert (tmp_path / "data" / "_state" / "roles.json").exists()


# --- real processes -------------------------------------------------------------------

# Each worker is a separate Python process, as the daemon and the CLI are. They
# all block on a "go" file so their writes really overlap, then print one JSON
# line with their outcome.
_WORKER = r"""
import asyncio, json, pathlib, sys, time
from cryptorun_daemon.errors import ConflictError
from cryptorun_daemon.failover.store_file import FileStateStore

root, go, action, region = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3], sys.argv[4]

async def main() -> dict:
    store = FileStateStore(root, lock_timeout=30)
    deadline = time.monotonic() + 30
    while not go.exists():
        if time.monotonic() > deadline:
            return {"outcome": "no-go"}
        await asyncio.sleep(0.001)
    if action == "promote":
        try:
            state = await store.promote("warm", region, "eu-central", 1)
        except ConflictError as exc:
            return {"outcome": "conflict", "detail": str(exc)}
        return {"outcome": "won", "epoch": state.epoch, "primary": state.primary}
    for i in range(20):  # many overlapping read-modify-writes per process
        await store.set_drained(region, i % 2 == 1)
        await store.heartbeat(region)
    return {"outcome": "done"}

print(json.dumps(asyncio.run(main())))
"""


def _run_workers(tmp_path: Path, action: str, regions: list[str]) -> list[dict[str, object]]:
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(tmp_path), str(go), action, region],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=REPO_ROOT,
            env=env,
        )
        for region in regions
    ]
    time.sleep(0.2)  # let interpreters start; correctness does not depend on it
    go.touch()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
        results.append(json.loads(out.decode().strip().splitlines()[-1]))
    return results


@pytest.mark.slow
def test_concurrent_promotions_from_many_processes_exactly_one_wins(tmp_path: Path) -> None:
    """N processes promote different regions with the same expected epoch: exactly one wins."""
    asyncio.run(FileStateStore(tmp_path).initialise("warm", "eu-central"))
    candidates = [f"region-{i}" for i in range(8)]
    results = _run_workers(tmp_path, "promote", candidates)
    winners = [r for r in results if r["outcome"] == "won"]
    assert len(winners) == 1, results
    assert all(r["outcome"] == "conflict" for r in results if r is not winners[0]), results
    final = asyncio.run(FileStateStore(tmp_path).get("warm"))
    assert final.epoch == 2
    assert final.primary == winners[0]["primary"]
    assert [t.kind for t in final.history] == ["bootstrap", "promotion"]


@pytest.mark.slow
def test_concurrent_promotions_of_the_same_region_exactly_one_wins(tmp_path: Path) -> None:
    """N processes all promote the same region at epoch 1: one wins, the rest conflict."""
    asyncio.run(FileStateStore(tmp_path).initialise("warm", "eu-central"))
    results = _run_workers(tmp_path, "promote", ["us-east"] * 6)
    assert sorted(str(r["outcome"]) for r in results) == ["conflict"] * 5 + ["won"], results
    assert asyncio.run(FileStateStore(tmp_path).get("warm")).epoch == 2


@pytest.mark.slow
def test_concurrent_read_modify_writes_from_many_processes_lose_nothing(tmp_path: Path) -> None:
    """Overlapping drain and heartbeat updates from N processes are all kept (no lost update)."""
    regions = [f"region-{i}" for i in range(8)]
    results = _run_workers(tmp_path, "churn", regions)
    assert all(r["outcome"] == "done" for r in results), results
    store = FileStateStore(tmp_path)
    assert asyncio.run(store.drained_regions()) == set(regions)
    assert asyncio.run(store.alive_regions()) == set(regions)
