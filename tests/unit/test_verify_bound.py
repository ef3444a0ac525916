"""The verifier bounds how many partitions its validators check at once."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

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
