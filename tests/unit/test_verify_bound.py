"""The verifier bounds how many partitions its validators check at once."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cryptorun_daemon.replication import verify
from cryptorun_daemon.replication.verify import PartitionVerifier
from cryptorun_daemon.storage.manifest import read_manifest
from tests.harness.testdata import seed_partitions

T0 = datetime(2025, 9, 1, tzinfo=UTC)


async def test_validations_run_at_most_max_validations_at_once(tmp_path: Path) -> None:
    """Six partitions validated concurrently with max_validations=2 never have more than
    two validator calls in flight (validators decode whole files: memory is bounded)."""
    dirs = seed_partitions(tmp_path, start=T0, count=6, rows=20)
    lock = threading.Lock()
    running = 0
    peak = 0

    def validator(path: Path, dataset: str, tier: str) -> bool:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.05)  # holds the slot long enough for the others to pile up
        with lock:
            running -= 1
        return True

    verifier = PartitionVerifier(validators=[validator], max_validations=2)
    await asyncio.gather(*(verifier.validate(read_manifest(d), d) for d in dirs))
    assert peak == 2


async def test_validations_run_on_max_validations_own_threads_and_release_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Validator calls run only on the verifier's own threads (at most max_validations of
    them), and the freed memory is handed back on the thread that decoded, right after
    its call: the allocators keep free pages per thread, so decoding on many threads, or
    releasing from another one, leaves memory behind."""
    dirs = seed_partitions(tmp_path, start=T0, count=8, rows=20)
    local = threading.local()
    names: set[str] = set()
    unreleased: list[str] = []

    def validator(path: Path, dataset: str, tier: str) -> bool:
        names.add(threading.current_thread().name)
        local.decoded = True
        time.sleep(0.02)
        return True

    def release() -> None:
        if not getattr(local, "decoded", False):
            unreleased.append(threading.current_thread().name)
        local.decoded = False

    monkeypatch.setattr(verify, "release_memory", release)
    verifier = PartitionVerifier(validators=[validator], max_validations=2)
    try:
        await asyncio.gather(*(verifier.validate(read_manifest(d), d) for d in dirs))
    finally:
        verifier.close()
    assert names
    assert all(n.startswith("validate") for n in names), names
    assert len(names) <= 2
    assert unreleased == []


async def test_the_decode_pool_is_released_once_a_burst_of_validations_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decode pool keeps its pages while validations follow each other (releasing
    after every file faulted them in again for the next) and hands them back once the
    last validation in flight ends: once per burst, not once per file or partition."""
    dirs = seed_partitions(tmp_path, start=T0, count=6, rows=20)
    released: list[int] = []
    running = 0

    def validator(path: Path, dataset: str, tier: str) -> bool:
        nonlocal running
        running += 1
        time.sleep(0.01)
        running -= 1
        return True

    done = threading.Event()

    def release() -> None:
        released.append(running)
        done.set()

    monkeypatch.setattr(verify, "release_decode_pool", release)
    verifier = PartitionVerifier(validators=[validator], max_validations=2)
    await asyncio.gather(*(verifier.validate(read_manifest(d), d) for d in dirs))
    assert await asyncio.to_thread(done.wait, 10)  # it runs on a validation thread
    done.clear()
    await verifier.validate(read_manifest(dirs[0]), dirs[0])
    assert await asyncio.to_thread(done.wait, 10)
    await asyncio.to_thread(verifier._threads.shutdown, True)  # nothing else queued behind
    assert released == [0, 0]  # once per burst, with nothing decoding
